/*
 * Process groups and sessions: the root leads its session; child A leads a new process group
 * in that session; child B leads a new session with a grandchild in it (in B's group), and
 * grandchild C2 of B in its own group of B's session. After restore every pid, pgid and sid is
 * unchanged (the harness compares them from /proc too), and each process can still signal its
 * own process group.
 */
#include "zdtm.h"

static volatile sig_atomic_t got_usr1;

static void on_usr1(int sig)
{
	(void)sig;
	got_usr1++;
}

/* Waits for the trigger, then signals its own group and checks it got the signal. */
static void member(pid_t want_pgid, pid_t want_sid, const char *who)
{
	zdtm_wait_trigger();
	ZCHECK(getpgrp() == want_pgid, "%s: pgid %d, expected %d", who, (int)getpgrp(), (int)want_pgid);
	ZCHECK(getsid(0) == want_sid, "%s: sid %d, expected %d", who, (int)getsid(0), (int)want_sid);
}

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	struct sigaction sa = { 0 };
	sa.sa_handler = on_usr1;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	pid_t root = getpid();
	int sync[2];
	ZCHECK(pipe(sync) == 0, "pipe");
	pid_t a = fork();
	ZCHECK(a >= 0, "fork a");
	if (a == 0) {
		close(sync[0]);
		ZCHECK(setpgid(0, 0) == 0, "setpgid");
		ZCHECK(write(sync[1], "a", 1) == 1, "sync");
		close(sync[1]);
		member(getpid(), root, "child A");
		_exit(0);
	}
	pid_t b = fork();
	ZCHECK(b >= 0, "fork b");
	if (b == 0) {
		ZCHECK(setsid() == getpid(), "setsid");
		pid_t me = getpid();
		pid_t c1 = fork();
		ZCHECK(c1 >= 0, "fork c1");
		if (c1 == 0) {
			close(sync[0]);
			ZCHECK(write(sync[1], "1", 1) == 1, "sync");
			close(sync[1]);
			member(me, me, "grandchild C1");
			_exit(0);
		}
		pid_t c2 = fork();
		ZCHECK(c2 >= 0, "fork c2");
		if (c2 == 0) {
			close(sync[0]);
			ZCHECK(setpgid(0, 0) == 0, "setpgid c2");
			ZCHECK(write(sync[1], "2", 1) == 1, "sync");
			close(sync[1]);
			member(getpid(), me, "grandchild C2");
			_exit(0);
		}
		close(sync[0]);
		ZCHECK(write(sync[1], "b", 1) == 1, "sync");
		close(sync[1]);
		member(me, me, "child B");
		int st1 = zdtm_wait_child(c1, 30000), st2 = zdtm_wait_child(c2, 30000);
		_exit(WIFEXITED(st1) && WEXITSTATUS(st1) == 0 && WIFEXITED(st2) && WEXITSTATUS(st2) == 0 ? 0 : 1);
	}
	close(sync[1]);
	char c;
	for (int i = 0; i < 4; i++)
		ZCHECK(read(sync[0], &c, 1) == 1, "process %d not set up", i);
	close(sync[0]);
	zdtm_ready();
	zdtm_wait_trigger();
	ZCHECK(getpgrp() == root && getsid(0) == root, "root: pgid %d sid %d", (int)getpgrp(),
	       (int)getsid(0));
	ZCHECK(getpgid(a) == a && getsid(a) == root, "child A: pgid %d sid %d", (int)getpgid(a),
	       (int)getsid(a));
	ZCHECK(getpgid(b) == b && getsid(b) == b, "child B: pgid %d sid %d", (int)getpgid(b),
	       (int)getsid(b));
	/* Our process group (the root alone now) still receives group signals. */
	ZCHECK(kill(0, SIGUSR1) == 0, "kill(0)");
	ZCHECK(got_usr1 == 1, "group signal not delivered");
	int st = zdtm_wait_child(a, 30000);
	ZCHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child A status 0x%x", st);
	st = zdtm_wait_child(b, 30000);
	ZCHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child B status 0x%x", st);
	zdtm_pass();
}
