/*
 * Processes in the middle of blocking calls when the checkpoint lands:
 *   - the root sleeps in nanosleep (400 ms at a time); each call must return 0 (no spurious
 *     EINTR: no handler is installed) having slept at least the requested time;
 *   - child A is blocked in read() on an empty pipe from the root; after the trigger the root
 *     writes to it and the read must return exactly that message;
 *   - child B is blocked in waitpid() on its own child C, which exits with status 7 after the
 *     trigger; B must reap it with that status.
 * Every child reports through its exit status, which the root collects with waitpid.
 */
#include "zdtm.h"

#define MSG "wake-up-after-restore"

static void child_reader(int rfd)
{
	char buf[64] = { 0 };
	ssize_t n = read(rfd, buf, sizeof(buf) - 1);
	if (n < 0) {
		zdtm_log("reader: read failed: %s", strerror(errno));
		_exit(10);
	}
	if ((size_t)n != strlen(MSG) || strcmp(buf, MSG) != 0) {
		zdtm_log("reader: read %zd bytes '%s'", n, buf);
		_exit(11);
	}
	_exit(0);
}

static void child_waiter(void)
{
	pid_t c = fork();
	if (c < 0)
		_exit(20);
	if (c == 0) {
		zdtm_wait_trigger();
		_exit(7);
	}
	int st;
	pid_t r = waitpid(c, &st, 0);
	if (r != c) {
		zdtm_log("waiter: waitpid returned %d: %s", (int)r, strerror(errno));
		_exit(21);
	}
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 7) {
		zdtm_log("waiter: grandchild status 0x%x", st);
		_exit(22);
	}
	_exit(0);
}

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	int p[2];
	ZCHECK(pipe(p) == 0, "pipe");
	pid_t reader = fork();
	ZCHECK(reader >= 0, "fork");
	if (reader == 0) {
		close(p[1]);
		child_reader(p[0]);
	}
	close(p[0]);
	pid_t waiter = fork();
	ZCHECK(waiter >= 0, "fork");
	if (waiter == 0) {
		close(p[1]);
		child_waiter();
	}
	/* Ready once both children are asleep in their calls (state S in /proc). */
	for (int tries = 0;; tries++) {
		char path[64], buf[512];
		int sleeping = 0;
		pid_t who[2] = { reader, waiter };
		for (int i = 0; i < 2; i++) {
			snprintf(path, sizeof(path), "/proc/%d/stat", (int)who[i]);
			FILE *f = fopen(path, "r");
			if (f && fgets(buf, sizeof(buf), f)) {
				char *rp = strrchr(buf, ')');
				if (rp && rp[2] == 'S')
					sleeping++;
			}
			if (f)
				fclose(f);
		}
		if (sleeping == 2)
			break;
		ZCHECK(tries < 10000, "children never went to sleep");
		zdtm_msleep(2);
	}
	zdtm_ready();
	int rounds = 0;
	while (!zdtm_triggered()) {
		struct timespec req = { 0, 400 * 1000000L }, rem = { 0, 0 };
		uint64_t t0 = zdtm_now_ns();
		int r = nanosleep(&req, &rem);
		uint64_t slept = zdtm_now_ns() - t0;
		ZCHECK(r == 0, "nanosleep returned %d (rem %ld.%09ld) after %llu ns", r, (long)rem.tv_sec,
		       rem.tv_nsec, (unsigned long long)slept);
		ZCHECK(slept >= 400 * 1000000ull, "nanosleep returned early after %llu ns",
		       (unsigned long long)slept);
		rounds++;
	}
	ZCHECK(write(p[1], MSG, strlen(MSG)) == (ssize_t)strlen(MSG), "write to reader");
	int st = zdtm_wait_child(reader, 30000);
	ZCHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "reader status 0x%x (see log)", st);
	st = zdtm_wait_child(waiter, 30000);
	ZCHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "waiter status 0x%x (see log)", st);
	(void)rounds;
	zdtm_pass();
}
