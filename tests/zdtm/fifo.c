/*
 * A named pipe (FIFO) in the run directory, open for reading by the root and for writing by a
 * child, with bytes in flight at checkpoint time. After restore: the fds still refer to the
 * FIFO at its path, the queued bytes are all there, and new bytes flow.
 */
#include "zdtm.h"
#include <sys/ioctl.h>

#define LEN 30000

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	char path[4096];
	zdtm_path(path, sizeof(path), "fifo");
	ZCHECK(mkfifo(path, 0600) == 0, "mkfifo");
	/* O_NONBLOCK opens the read end without waiting for a writer; then block again. */
	int rfd = open(path, O_RDONLY | O_NONBLOCK);
	ZCHECK(rfd >= 0, "open fifo");
	ZCHECK(fcntl(rfd, F_SETFL, 0) == 0, "clear O_NONBLOCK");
	struct stat fst;
	ZCHECK(fstat(rfd, &fst) == 0, "fstat");
	pid_t child = fork();
	ZCHECK(child >= 0, "fork");
	if (child == 0) {
		int wfd = open(path, O_WRONLY);
		if (wfd < 0)
			_exit(40);
		char *data = malloc(LEN);
		zdtm_fill(data, LEN, 6000);
		if (write(wfd, data, LEN) != LEN)
			_exit(41);
		zdtm_wait_trigger();
		if (write(wfd, "tail", 4) != 4)
			_exit(42);
		_exit(0);
	}
	for (int tries = 0;; tries++) {
		int avail = 0;
		ZCHECK(ioctl(rfd, FIONREAD, &avail) == 0, "FIONREAD");
		if (avail == LEN)
			break;
		ZCHECK(tries < 10000, "only %d bytes in the fifo", avail);
		zdtm_msleep(2);
	}
	zdtm_ready();
	zdtm_wait_trigger();
	struct stat now;
	ZCHECK(fstat(rfd, &now) == 0 && S_ISFIFO(now.st_mode) && now.st_ino == fst.st_ino,
	       "fd no longer the fifo");
	char *buf = malloc(LEN + 4);
	size_t got = 0;
	while (got < LEN + 4) {
		ssize_t n = read(rfd, buf + got, LEN + 4 - got);
		ZCHECK(n > 0, "fifo read returned %zd after %zu bytes", n, got);
		got += (size_t)n;
	}
	size_t bad = zdtm_verify(buf, LEN, 6000);
	ZCHECK(bad == (size_t)-1, "fifo data differs at %zu", bad);
	ZCHECK(memcmp(buf + LEN, "tail", 4) == 0, "fifo tail");
	int st = zdtm_wait_child(child, 30000);
	ZCHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status 0x%x", st);
	zdtm_pass();
}
