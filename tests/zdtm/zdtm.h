/*
 * zdtm.h -- the small runtime shared by every workload of understudy's zdtm-style suite.
 *
 * Protocol with the harness (crates/understudy/tests/zdtm.rs):
 *   argv[1] = DIR, a directory private to this run (also used to recognise our processes: it
 *             appears in every process's /proc/PID/cmdline).
 *   zdtm_start()      forks; the parent prints the child's pid on stdout and exits 0, the child
 *                     becomes a session leader (so the dumped tree owns its session and process
 *                     group) with stdin on /dev/null and stdout/stderr appended to DIR/log.
 *                     With ZDTM_FOREGROUND set (under `understudy run`) it neither forks nor
 *                     starts a session.
 *   zdtm_ready()      DIR/ready appears (atomically): the state is built, checkpoint any time.
 *   zdtm_triggered()  true once DIR/check exists: the harness has restored us, verify now.
 *   zdtm_pass()/zdtm_fail()  write DIR/result ("PASS" or "FAIL: reason") atomically, then exit.
 *
 * Workloads keep working while they wait (so they are checkpointed in the middle of work) but
 * sleep between steps: the machine has two cores shared by many jobs.
 */
#ifndef ZDTM_H
#define ZDTM_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *zdtm_dir;

static __attribute__((unused)) void zdtm_path(char *buf, size_t len, const char *name)
{
	snprintf(buf, len, "%s/%s", zdtm_dir, name);
}

/* Write NAME atomically (tmp file + link) so the harness never reads half a file. The first
 * writer wins: a child's detailed FAIL is not overwritten by its parent's summary. */
static __attribute__((unused)) void zdtm_write_file(const char *name, const char *text)
{
	char tmp[4096], dst[4096];
	snprintf(tmp, sizeof(tmp), "%s/.%s.%d.tmp", zdtm_dir, name, (int)getpid());
	zdtm_path(dst, sizeof(dst), name);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		_exit(90);
	size_t n = strlen(text);
	if (write(fd, text, n) != (ssize_t)n)
		_exit(91);
	close(fd);
	if (link(tmp, dst) != 0 && errno != EEXIST)
		_exit(92);
	unlink(tmp);
}

static __attribute__((unused)) void zdtm_log(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "[%d] ", (int)getpid());
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	fflush(stderr);
	va_end(ap);
}

static __attribute__((unused)) void zdtm_pass(void)
{
	zdtm_write_file("result", "PASS\n");
	exit(0);
}

__attribute__((format(printf, 1, 2), unused)) static void zdtm_fail(const char *fmt, ...)
{
	char msg[2048], text[2100];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(text, sizeof(text), "FAIL: %s\n", msg);
	zdtm_log("%s", text);
	zdtm_write_file("result", text);
	exit(1);
}

/* A check that reports which condition failed, where. */
#define ZCHECK(cond, ...)                                                                         \
	do {                                                                                      \
		if (!(cond)) {                                                                    \
			char zmsg_[1200];                                                         \
			snprintf(zmsg_, sizeof(zmsg_), __VA_ARGS__);                              \
			zdtm_fail("%s:%d: %s (errno %d %s)", __FILE__, __LINE__, zmsg_, errno,     \
				  strerror(errno));                                               \
		}                                                                                 \
	} while (0)

static __attribute__((unused)) void zdtm_start(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s DIR\n", argv[0]);
		exit(2);
	}
	zdtm_dir = argv[1];
	/* Under `understudy run` the supervisor already gives us a session and a parent. */
	int foreground = getenv("ZDTM_FOREGROUND") != NULL;
	if (!foreground) {
		fflush(stdout);
		pid_t pid = fork();
		if (pid < 0) {
			perror("fork");
			exit(2);
		}
		if (pid > 0) {
			printf("%d\n", (int)pid);
			fflush(stdout);
			_exit(0);
		}
		if (setsid() < 0)
			_exit(93);
	}
	/* Whatever the harness leaked to us (e.g. cargo's jobserver pipe) is not part of the test. */
	syscall(SYS_close_range, 3, ~0U, 0);
	int nul = open("/dev/null", O_RDONLY);
	char log[4096];
	zdtm_path(log, sizeof(log), "log");
	int lfd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (nul < 0 || lfd < 0)
		_exit(94);
	dup2(nul, 0);
	dup2(lfd, 1);
	dup2(lfd, 2);
	close(nul);
	close(lfd);
	setvbuf(stdout, NULL, _IOLBF, 0);
}

static __attribute__((unused)) void zdtm_ready(void)
{
	zdtm_write_file("ready", "ready\n");
}

static __attribute__((unused)) int zdtm_triggered(void)
{
	char p[4096];
	zdtm_path(p, sizeof(p), "check");
	return access(p, F_OK) == 0;
}

static __attribute__((unused)) void zdtm_msleep(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Sleep-poll until the harness asks for the check. */
static __attribute__((unused)) void zdtm_wait_trigger(void)
{
	while (!zdtm_triggered())
		zdtm_msleep(5);
}

static __attribute__((unused)) uint64_t zdtm_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A cheap deterministic pattern generator (xorshift64*). */
static inline __attribute__((unused)) uint64_t zdtm_rng(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1Dull;
}

static __attribute__((unused)) void zdtm_fill(void *p, size_t len, uint64_t seed)
{
	uint64_t s = seed | 1, *q = p;
	for (size_t i = 0; i < len / 8; i++)
		q[i] = zdtm_rng(&s);
}

/* Returns the offset of the first mismatch, or (size_t)-1 when the pattern is intact. */
static __attribute__((unused)) size_t zdtm_verify(const void *p, size_t len, uint64_t seed)
{
	uint64_t s = seed | 1;
	const uint64_t *q = p;
	for (size_t i = 0; i < len / 8; i++)
		if (q[i] != zdtm_rng(&s))
			return i * 8;
	return (size_t)-1;
}

/* Wait for a child with a bound; returns its wait status or fails the test. */
static __attribute__((unused)) int zdtm_wait_child(pid_t pid, int timeout_ms)
{
	int status;
	for (int waited = 0;; waited += 5) {
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid)
			return status;
		if (r < 0)
			zdtm_fail("waitpid(%d): %s", (int)pid, strerror(errno));
		if (waited >= timeout_ms)
			zdtm_fail("child %d did not exit within %d ms", (int)pid, timeout_ms);
		zdtm_msleep(5);
	}
}

#endif
