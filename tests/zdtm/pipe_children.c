/*
 * A parent with three children connected by pipes, with data in flight at checkpoint time:
 * each child has a private pipe from the parent (down) holding bytes it has not read yet and a
 * private pipe to the parent (up) holding bytes the parent has not read yet; all three children
 * also share one pipe to the parent (one open file description in four processes). After
 * restore: every byte arrives once and in order, parent/child links, process group and session
 * are intact, and the parent reaps each child with its exit status.
 */
#include "zdtm.h"
#include <sys/ioctl.h>

#define NCHILD 3
#define DOWN_LEN 20000 /* below the 64 KiB pipe capacity: the writer never blocks */
#define UP_LEN 12000

static void child(int i, int down, int up, int shared, pid_t parent)
{
	char *buf = malloc(DOWN_LEN);
	pid_t sid = getsid(0), pgid = getpgrp();
	/* Keep working (and not reading) until the harness asks for the check. */
	uint64_t ticks = 0;
	while (!zdtm_triggered()) {
		ticks++;
		zdtm_msleep(3);
	}
	ZCHECK(getppid() == parent, "child %d: parent is %d, expected %d", i, (int)getppid(),
	       (int)parent);
	ZCHECK(getsid(0) == sid && getpgrp() == pgid, "child %d: session/group changed", i);
	size_t got = 0;
	while (got < DOWN_LEN) {
		ssize_t n = read(down, buf + got, DOWN_LEN - got);
		ZCHECK(n > 0, "child %d: read down pipe returned %zd after %zu bytes", i, n, got);
		got += (size_t)n;
	}
	size_t bad = zdtm_verify(buf, DOWN_LEN, 1000 + i);
	ZCHECK(bad == (size_t)-1, "child %d: down pipe data differs at %zu", i, bad);
	/* The parent closed its write end after filling: the pipe must now be at EOF. */
	char extra;
	ZCHECK(read(down, &extra, 1) == 0, "child %d: down pipe not at EOF", i);
	/* A second message on the shared pipe, after restore, tagged with our index. */
	char msg[16];
	snprintf(msg, sizeof(msg), "after-%d\n", i);
	ZCHECK(write(shared, msg, strlen(msg)) == (ssize_t)strlen(msg), "child %d: shared write", i);
	(void)ticks;
	(void)up;
	exit(0);
}

static void read_exact(int fd, char *buf, size_t len, const char *what)
{
	size_t got = 0;
	while (got < len) {
		ssize_t n = read(fd, buf + got, len - got);
		ZCHECK(n > 0, "%s: read returned %zd after %zu of %zu bytes", what, n, got, len);
		got += (size_t)n;
	}
}

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	int down[NCHILD][2], up[NCHILD][2], shared[2];
	pid_t kids[NCHILD];
	ZCHECK(pipe(shared) == 0, "pipe");
	for (int i = 0; i < NCHILD; i++) {
		ZCHECK(pipe(down[i]) == 0 && pipe(up[i]) == 0, "pipe");
		pid_t pid = fork();
		ZCHECK(pid >= 0, "fork");
		if (pid == 0) {
			close(down[i][1]);
			close(up[i][0]);
			close(shared[0]);
			/* Drop the fds of earlier siblings' pipes. */
			for (int j = 0; j < i; j++) {
				close(down[j][1]);
				close(up[j][0]);
			}
			char *data = malloc(UP_LEN);
			zdtm_fill(data, UP_LEN, 2000 + i);
			ZCHECK(write(up[i][1], data, UP_LEN) == UP_LEN, "child %d: write up", i);
			char msg[16];
			snprintf(msg, sizeof(msg), "before-%d\n", i);
			ZCHECK(write(shared[1], msg, strlen(msg)) == (ssize_t)strlen(msg), "shared write");
			child(i, down[i][0], up[i][1], shared[1], getppid());
		}
		kids[i] = pid;
		close(down[i][0]);
		close(up[i][1]);
		char *data = malloc(DOWN_LEN);
		zdtm_fill(data, DOWN_LEN, 1000 + i);
		ZCHECK(write(down[i][1], data, DOWN_LEN) == DOWN_LEN, "write down %d", i);
		close(down[i][1]);
		free(data);
	}
	close(shared[1]);
	/* Ready when every child has put its bytes in flight. */
	for (int i = 0; i < NCHILD; i++) {
		int avail = 0;
		for (int tries = 0; tries < 10000; tries++) {
			ZCHECK(ioctl(up[i][0], FIONREAD, &avail) == 0, "FIONREAD");
			if (avail >= UP_LEN)
				break;
			zdtm_msleep(2);
		}
		ZCHECK(avail == UP_LEN, "child %d: only %d bytes in flight", i, avail);
	}
	zdtm_ready();
	zdtm_wait_trigger();

	for (int i = 0; i < NCHILD; i++) {
		int avail = -1;
		ZCHECK(ioctl(up[i][0], FIONREAD, &avail) == 0 && avail == UP_LEN,
		       "up pipe %d holds %d bytes after restore, expected %d", i, avail, UP_LEN);
		char *buf = malloc(UP_LEN);
		read_exact(up[i][0], buf, UP_LEN, "up pipe");
		size_t bad = zdtm_verify(buf, UP_LEN, 2000 + i);
		ZCHECK(bad == (size_t)-1, "up pipe %d data differs at %zu", i, bad);
		free(buf);
	}
	for (int i = 0; i < NCHILD; i++) {
		int st = zdtm_wait_child(kids[i], 30000);
		ZCHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d (pid %d) status 0x%x", i,
		       (int)kids[i], st);
	}
	/* Shared pipe: three "before" lines (in fork order), then three "after" lines, then EOF. */
	char all[256] = { 0 };
	size_t got = 0;
	for (;;) {
		ssize_t n = read(shared[0], all + got, sizeof(all) - 1 - got);
		ZCHECK(n >= 0, "read shared");
		if (n == 0)
			break;
		got += (size_t)n;
	}
	for (int i = 0; i < NCHILD; i++) {
		char msg[16];
		snprintf(msg, sizeof(msg), "before-%d\n", i);
		ZCHECK(memmem(all, 27, msg, strlen(msg)), "shared pipe start lacks %s: %s", msg, all);
		snprintf(msg, sizeof(msg), "after-%d\n", i);
		ZCHECK(strstr(all + 27, msg), "shared pipe lacks %s", msg);
	}
	ZCHECK(got == 27 + 24, "shared pipe held %zu bytes", got);
	zdtm_pass();
}
