/*
 * Zombies: the root keeps two children unreaped after they ended, one by _exit(7), one killed
 * by SIGTERM. Both are zombies while the tree is checkpointed (the root makes sure with
 * waitid(WNOWAIT), which does not reap). After restore the root reaps each by its pid and
 * checks the statuses, and that no third child appeared. A SIGCHLD handler counts deliveries:
 * the restore re-creates the zombies, and their parent must not be told a second time.
 */
#include "zdtm.h"

static volatile sig_atomic_t sigchld_count;

static void on_sigchld(int sig)
{
	(void)sig;
	sigchld_count++;
}

/* Blocks until PID has ended, without reaping it; returns the raw wait status. */
static int ended_unreaped(pid_t pid)
{
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	while (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT) != 0)
		ZCHECK(errno == EINTR, "waitid(%d, WNOWAIT)", (int)pid);
	ZCHECK(si.si_pid == pid, "waitid(%d) gave pid %d", (int)pid, (int)si.si_pid);
	return si.si_code == CLD_EXITED ? si.si_status << 8 : si.si_status;
}

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	struct sigaction sa_chld;
	memset(&sa_chld, 0, sizeof(sa_chld));
	sa_chld.sa_handler = on_sigchld;
	sa_chld.sa_flags = SA_RESTART;
	ZCHECK(sigaction(SIGCHLD, &sa_chld, NULL) == 0, "sigaction(SIGCHLD)");
	pid_t a = fork();
	ZCHECK(a >= 0, "fork a");
	if (a == 0)
		_exit(7);
	pid_t b = fork();
	ZCHECK(b >= 0, "fork b");
	if (b == 0) {
		for (;;)
			pause();
	}
	ZCHECK(kill(b, SIGTERM) == 0, "kill b");
	int sa = ended_unreaped(a), sb = ended_unreaped(b);
	ZCHECK(WIFEXITED(sa) && WEXITSTATUS(sa) == 7, "child a: status 0x%x before", sa);
	ZCHECK(WIFSIGNALED(sb) && WTERMSIG(sb) == SIGTERM, "child b: status 0x%x before", sb);
	/* Each SIGCHLD was sent before its child became a zombie, so both were delivered when the
	 * waitid above returned (1 or 2: standard signals merge while pending). */
	int told = sigchld_count;
	ZCHECK(told >= 1 && told <= 2, "SIGCHLD delivered %d times before", told);
	zdtm_ready();
	zdtm_wait_trigger();
	ZCHECK(sigchld_count == told, "SIGCHLD delivered %d times, %d before the checkpoint",
	       (int)sigchld_count, told);
	int st;
	pid_t r = waitpid(a, &st, WNOHANG);
	ZCHECK(r == a, "waitpid(%d) gave %d: child a is no zombie of ours", (int)a, (int)r);
	ZCHECK(WIFEXITED(st) && WEXITSTATUS(st) == 7, "child a: status 0x%x, expected exit 7", st);
	r = waitpid(b, &st, WNOHANG);
	ZCHECK(r == b, "waitpid(%d) gave %d: child b is no zombie of ours", (int)b, (int)r);
	ZCHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, "child b: status 0x%x, expected SIGTERM",
	       st);
	errno = 0;
	ZCHECK(waitpid(-1, &st, WNOHANG) < 0 && errno == ECHILD, "a third child exists");
	zdtm_pass();
}
