/*
 * A resource understudy cannot checkpoint yet, held by a CHILD of the root: usage
 * `unsupported DIR KIND` with KIND one of io_uring, socket (a netlink socket), epoll (an epoll
 * instance whose registered fd number was closed while the file stays open under another
 * number: its registration cannot be re-created), inotify, thread_cpu_timer (a POSIX timer on
 * CLOCK_THREAD_CPUTIME_ID: bound to the creating thread, which the kernel does not report). `checkpoint` must fail naming the child and the resource and leave the whole tree
 * running and untouched; the check then proves the resource still works and memory is intact.
 * Exit status 3 before zdtm_start's fork means KIND is unavailable here (the test skips).
 */
#include "zdtm.h"
#include <linux/io_uring.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <linux/netlink.h>

static const char *kind;
static int fds[2] = { -1, -1 };
static timer_t cpu_timer;

static int make(void)
{
	if (strcmp(kind, "io_uring") == 0) {
		struct io_uring_params params;
		memset(&params, 0, sizeof(params));
		fds[0] = (int)syscall(__NR_io_uring_setup, 4, &params);
		return fds[0];
	}
	if (strcmp(kind, "socket") == 0)
		return fds[0] = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
	if (strcmp(kind, "epoll") == 0) {
		fds[0] = epoll_create1(0);
		fds[1] = eventfd(0, 0);
		int alias = dup(fds[1]);
		struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 4242 };
		if (fds[0] < 0 || fds[1] < 0 || alias < 0 ||
		    epoll_ctl(fds[0], EPOLL_CTL_ADD, alias, &ev) != 0)
			return -1;
		close(alias);
		return fds[0];
	}
	if (strcmp(kind, "inotify") == 0) {
		fds[0] = inotify_init1(0);
		if (fds[0] >= 0 && inotify_add_watch(fds[0], "/", IN_CREATE) < 0)
			return -1;
		return fds[0];
	}
	if (strcmp(kind, "thread_cpu_timer") == 0) {
		struct sigevent ev = { 0 };
		ev.sigev_notify = SIGEV_NONE;
		return timer_create(CLOCK_THREAD_CPUTIME_ID, &ev, &cpu_timer);
	}
	return -1;
}

/* Proves the resource still works after the refused checkpoint. */
static void use(void)
{
	if (strcmp(kind, "socket") == 0) {
		int t = 0;
		socklen_t l = sizeof(t);
		ZCHECK(getsockopt(fds[0], SOL_SOCKET, SO_TYPE, &t, &l) == 0 && t == SOCK_RAW, "netlink socket");
	} else if (strcmp(kind, "epoll") == 0) {
		uint64_t one = 1;
		struct epoll_event ev;
		ZCHECK(write(fds[1], &one, 8) == 8, "eventfd write");
		ZCHECK(epoll_wait(fds[0], &ev, 1, 1000) == 1 && ev.data.u64 == 4242, "epoll_wait");
	} else if (strcmp(kind, "inotify") == 0) {
		ZCHECK(inotify_add_watch(fds[0], "/tmp", IN_CREATE) >= 0, "inotify still works");
	} else if (strcmp(kind, "thread_cpu_timer") == 0) {
		struct itimerspec its;
		ZCHECK(timer_gettime(cpu_timer, &its) == 0, "thread CPU-time timer still works");
	} else {
		char link[128] = { 0 }, proc[64];
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fds[0]);
		ZCHECK(readlink(proc, link, sizeof(link) - 1) > 0 && strstr(link, "io_uring"),
		       "ring fd is now %s", link);
	}
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s DIR KIND\n", argv[0]);
		return 2;
	}
	kind = argv[2];
	if (make() < 0) {
		printf("unavailable\n");
		return 3;
	}
	if (fds[0] >= 0)
		close(fds[0]);
	if (fds[1] >= 0)
		close(fds[1]);
	if (strcmp(kind, "thread_cpu_timer") == 0)
		timer_delete(cpu_timer);
	fds[0] = fds[1] = -1;
	zdtm_start(argc, argv);
	char *mem = malloc(1 << 20);
	zdtm_fill(mem, 1 << 20, 8000);
	int made[2];
	ZCHECK(pipe(made) == 0, "pipe");
	pid_t child = fork();
	ZCHECK(child >= 0, "fork");
	if (child == 0) {
		close(made[0]);
		ZCHECK(make() >= 0, "create %s", kind);
		ZCHECK(write(made[1], "m", 1) == 1, "tell the parent");
		close(made[1]);
		volatile uint64_t counter = 0;
		while (!zdtm_triggered()) {
			counter++;
			zdtm_msleep(2);
		}
		use();
		ZCHECK(zdtm_verify(mem, 1 << 20, 8000) == (size_t)-1, "child memory changed");
		_exit(counter > 0 ? 0 : 1);
	}
	/* Ready only once the child holds the resource. */
	close(made[1]);
	char c;
	ZCHECK(read(made[0], &c, 1) == 1, "child did not create %s", kind);
	close(made[0]);
	zdtm_ready();
	zdtm_wait_trigger();
	int st = zdtm_wait_child(child, 30000);
	ZCHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status 0x%x", st);
	ZCHECK(zdtm_verify(mem, 1 << 20, 8000) == (size_t)-1, "memory changed");
	zdtm_pass();
}
