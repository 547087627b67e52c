/*
 * A resource understudy cannot checkpoint yet, held by a CHILD of the root: usage
 * `unsupported DIR KIND` with KIND one of io_uring, socket (an AF_UNIX socketpair), epoll,
 * eventfd, timerfd, signalfd. `checkpoint` must fail naming the child and the resource and leave the whole tree
 * running and untouched; the check then proves the resource still works and memory is intact.
 * Exit status 3 before zdtm_start's fork means KIND is unavailable here (the test skips).
 */
#include "zdtm.h"
#include <linux/io_uring.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>

static const char *kind;
static int fds[2] = { -1, -1 };

static int make(void)
{
	if (strcmp(kind, "io_uring") == 0) {
		struct io_uring_params params;
		memset(&params, 0, sizeof(params));
		fds[0] = (int)syscall(__NR_io_uring_setup, 4, &params);
		return fds[0];
	}
	if (strcmp(kind, "socket") == 0)
		return socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0 ? fds[0] : -1;
	if (strcmp(kind, "epoll") == 0) {
		fds[0] = epoll_create1(0);
		fds[1] = eventfd(0, 0);
		struct epoll_event ev = { .events = EPOLLIN, .data.fd = fds[1] };
		if (fds[0] >= 0 && fds[1] >= 0 && epoll_ctl(fds[0], EPOLL_CTL_ADD, fds[1], &ev) != 0)
			return -1;
		return fds[0];
	}
	if (strcmp(kind, "eventfd") == 0)
		return fds[0] = eventfd(5, 0);
	if (strcmp(kind, "timerfd") == 0) {
		fds[0] = timerfd_create(CLOCK_MONOTONIC, 0);
		struct itimerspec its = { { 0, 10000000 }, { 0, 10000000 } };
		if (fds[0] >= 0 && timerfd_settime(fds[0], 0, &its, NULL) != 0)
			return -1;
		return fds[0];
	}
	if (strcmp(kind, "signalfd") == 0) {
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGUSR1);
		sigprocmask(SIG_BLOCK, &set, NULL);
		return fds[0] = signalfd(-1, &set, 0);
	}
	return -1;
}

/* Proves the resource still works after the refused checkpoint. */
static void use(void)
{
	if (strcmp(kind, "socket") == 0) {
		char c = 0;
		ZCHECK(write(fds[0], "x", 1) == 1 && read(fds[1], &c, 1) == 1 && c == 'x', "socketpair");
	} else if (strcmp(kind, "epoll") == 0) {
		uint64_t one = 1;
		struct epoll_event ev;
		ZCHECK(write(fds[1], &one, 8) == 8, "eventfd write");
		ZCHECK(epoll_wait(fds[0], &ev, 1, 1000) == 1 && ev.data.fd == fds[1], "epoll_wait");
	} else if (strcmp(kind, "eventfd") == 0) {
		uint64_t v = 0;
		ZCHECK(read(fds[0], &v, 8) == 8 && v == 5, "eventfd value %llu", (unsigned long long)v);
	} else if (strcmp(kind, "timerfd") == 0) {
		uint64_t expirations = 0;
		ZCHECK(read(fds[0], &expirations, 8) == 8 && expirations > 0, "timerfd read");
	} else if (strcmp(kind, "signalfd") == 0) {
		struct signalfd_siginfo si;
		ZCHECK(kill(getpid(), SIGUSR1) == 0, "kill");
		ZCHECK(read(fds[0], &si, sizeof(si)) == sizeof(si) && si.ssi_signo == SIGUSR1, "signalfd read");
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
	close(fds[0]);
	if (fds[1] >= 0)
		close(fds[1]);
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
	int st = zdtm_wait_child(child, 10000);
	ZCHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status 0x%x", st);
	ZCHECK(zdtm_verify(mem, 1 << 20, 8000) == (size_t)-1, "memory changed");
	zdtm_pass();
}
