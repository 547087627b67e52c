/*
 * Seccomp: with no_new_privs set, stacked filters: the first makes getppid() fail with
 * EPERM, the second makes getpgid() fail with EACCES, then two filters on getsid() (ENOENT,
 * then ESRCH: among equal actions the newest filter wins, so getsid() fails with ESRCH only
 * while their order is kept); a second thread inherits all. After restore no_new_privs is
 * still set and every filter still applies, in order, to both threads, while other system
 * calls work.
 */
#include "zdtm.h"
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>

static int deny(int nr, int err)
{
	struct sock_filter code[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)err),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(code) / sizeof(code[0]), .filter = code };
	return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
}

static volatile int stop;
static char thread_error[256];

static void check_filters(char *err, size_t len)
{
	errno = 0;
	long r = syscall(SYS_getppid);
	if (r != -1 || errno != EPERM) {
		snprintf(err, len, "getppid returned %ld errno %d, expected EPERM", r, errno);
		return;
	}
	errno = 0;
	r = syscall(SYS_getpgid, 0);
	if (r != -1 || errno != EACCES) {
		snprintf(err, len, "getpgid returned %ld errno %d, expected EACCES", r, errno);
		return;
	}
	errno = 0;
	r = syscall(SYS_getsid, 0);
	if (r != -1 || errno != ESRCH) {
		snprintf(err, len, "getsid returned %ld errno %d, expected ESRCH (filter order lost?)", r, errno);
		return;
	}
	if (syscall(SYS_getpid) <= 0)
		snprintf(err, len, "getpid failed");
}

static void *worker(void *arg)
{
	(void)arg;
	while (!stop)
		zdtm_msleep(5);
	check_filters(thread_error, sizeof(thread_error));
	return NULL;
}

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	ZCHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, "no_new_privs");
	ZCHECK(deny(SYS_getppid, EPERM) == 0, "first filter");
	ZCHECK(deny(SYS_getpgid, EACCES) == 0, "second filter");
	ZCHECK(deny(SYS_getsid, ENOENT) == 0, "third filter");
	ZCHECK(deny(SYS_getsid, ESRCH) == 0, "fourth filter");
	pthread_t th;
	ZCHECK(pthread_create(&th, NULL, worker, NULL) == 0, "pthread_create");
	char err[256] = { 0 };
	check_filters(err, sizeof(err));
	ZCHECK(err[0] == 0, "before checkpoint: %s", err);
	zdtm_ready();
	zdtm_wait_trigger();
	ZCHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "no_new_privs lost");
	ZCHECK(prctl(PR_GET_SECCOMP, 0, 0, 0, 0) == 2, "seccomp mode is not filter");
	check_filters(err, sizeof(err));
	ZCHECK(err[0] == 0, "main thread: %s", err);
	stop = 1;
	ZCHECK(pthread_join(th, NULL) == 0, "join");
	ZCHECK(thread_error[0] == 0, "second thread: %s", thread_error);
	zdtm_pass();
}
