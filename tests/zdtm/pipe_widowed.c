/*
 * A "widowed" pipe: its read end is closed everywhere, the workload keeps only the write end
 * (with a non-default capacity, O_NONBLOCK and some bytes queued that nobody can ever read).
 * After restore writes still fail with EPIPE (SIGPIPE ignored), the capacity and flags are
 * the same, and a second pipe with both ends open still works.
 */
#include "zdtm.h"

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	int p[2], q[2];
	ZCHECK(pipe(p) == 0 && pipe(q) == 0, "pipe");
	ZCHECK(fcntl(p[1], F_SETPIPE_SZ, 131072) >= 131072, "F_SETPIPE_SZ");
	ZCHECK(write(p[1], "lost", 4) == 4, "write before widowing");
	close(p[0]);
	ZCHECK(fcntl(p[1], F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK");
	errno = 0;
	ZCHECK(write(p[1], "x", 1) == -1 && errno == EPIPE, "write to a widowed pipe: errno %d", errno);
	int cap = fcntl(p[1], F_GETPIPE_SZ);
	ZCHECK(write(q[1], "kept", 4) == 4, "write q");
	zdtm_ready();
	zdtm_wait_trigger();
	errno = 0;
	ZCHECK(write(p[1], "x", 1) == -1 && errno == EPIPE,
	       "write to the widowed pipe after restore: errno %d (expected EPIPE)", errno);
	ZCHECK(fcntl(p[1], F_GETPIPE_SZ) == cap, "capacity %d, expected %d", fcntl(p[1], F_GETPIPE_SZ), cap);
	ZCHECK(fcntl(p[1], F_GETFL) & O_NONBLOCK, "O_NONBLOCK lost");
	ZCHECK((fcntl(p[1], F_GETFL) & O_ACCMODE) == O_WRONLY, "not a write end");
	char buf[8] = { 0 };
	ZCHECK(read(q[0], buf, 4) == 4 && memcmp(buf, "kept", 4) == 0, "second pipe lost its bytes");
	zdtm_pass();
}
