/*
 * Signal handlers with flags and masks, an ignored signal, a blocked mask, and signals pending
 * at checkpoint time: a blocked SIGUSR1 (standard) and two queued SIGRTMIN+1 with values. After
 * restore: sigaction() reports the same handler, flags and mask; the mask and the pending set are
 * unchanged; unblocking delivers SIGUSR1 once and both real-time signals in order with their
 * values; handlers still run on a fresh raise.
 */
#include "zdtm.h"

static volatile sig_atomic_t usr1_count, usr2_count;
static volatile int rt_values[8];
static volatile sig_atomic_t rt_count;

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)si;
	(void)uc;
	usr1_count++;
}

static void on_usr2(int sig)
{
	(void)sig;
	usr2_count++;
}

static void on_rt(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	if (rt_count < 8)
		rt_values[rt_count] = si->si_value.sival_int;
	rt_count++;
}

static void same_action(int sig, const struct sigaction *want)
{
	struct sigaction got;
	ZCHECK(sigaction(sig, NULL, &got) == 0, "sigaction query %d", sig);
	ZCHECK(got.sa_handler == want->sa_handler, "signal %d: handler %p, expected %p", sig,
	       (void *)got.sa_handler, (void *)want->sa_handler);
	int flags_mask = SA_SIGINFO | SA_RESTART | SA_NODEFER | SA_RESETHAND | SA_ONSTACK;
	ZCHECK((got.sa_flags & flags_mask) == (want->sa_flags & flags_mask),
	       "signal %d: flags 0x%x, expected 0x%x", sig, got.sa_flags, want->sa_flags);
	for (int s = 1; s < 32; s++)
		ZCHECK(sigismember(&got.sa_mask, s) == sigismember(&want->sa_mask, s),
		       "signal %d: sa_mask differs at %d", sig, s);
}

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	struct sigaction a1 = { 0 }, a2 = { 0 }, art = { 0 }, ign = { 0 };
	a1.sa_sigaction = on_usr1;
	a1.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&a1.sa_mask);
	sigaddset(&a1.sa_mask, SIGUSR2);
	sigaddset(&a1.sa_mask, SIGTERM);
	a2.sa_handler = on_usr2;
	a2.sa_flags = SA_NODEFER | SA_RESETHAND;
	sigemptyset(&a2.sa_mask);
	art.sa_sigaction = on_rt;
	art.sa_flags = SA_SIGINFO;
	sigemptyset(&art.sa_mask);
	ign.sa_handler = SIG_IGN;
	sigemptyset(&ign.sa_mask);
	ZCHECK(sigaction(SIGUSR1, &a1, NULL) == 0, "sigaction USR1");
	ZCHECK(sigaction(SIGUSR2, &a2, NULL) == 0, "sigaction USR2");
	ZCHECK(sigaction(SIGRTMIN + 1, &art, NULL) == 0, "sigaction RT");
	ZCHECK(sigaction(SIGPIPE, &ign, NULL) == 0, "sigaction PIPE");

	sigset_t blocked;
	sigemptyset(&blocked);
	sigaddset(&blocked, SIGUSR1);
	sigaddset(&blocked, SIGRTMIN + 1);
	sigaddset(&blocked, SIGWINCH);
	ZCHECK(sigprocmask(SIG_BLOCK, &blocked, NULL) == 0, "sigprocmask");
	ZCHECK(kill(getpid(), SIGUSR1) == 0, "kill USR1");
	union sigval v1 = { .sival_int = 4242 }, v2 = { .sival_int = 4343 };
	ZCHECK(sigqueue(getpid(), SIGRTMIN + 1, v1) == 0, "sigqueue 1");
	ZCHECK(sigqueue(getpid(), SIGRTMIN + 1, v2) == 0, "sigqueue 2");
	ZCHECK(usr1_count == 0 && rt_count == 0, "blocked signal delivered");

	zdtm_ready();
	zdtm_wait_trigger();

	same_action(SIGUSR1, &a1);
	same_action(SIGUSR2, &a2);
	same_action(SIGRTMIN + 1, &art);
	same_action(SIGPIPE, &ign);
	sigset_t cur, pend;
	ZCHECK(sigprocmask(SIG_BLOCK, NULL, &cur) == 0, "sigprocmask query");
	for (int s = 1; s < SIGRTMAX; s++)
		ZCHECK(sigismember(&cur, s) == sigismember(&blocked, s), "mask differs at signal %d", s);
	ZCHECK(sigpending(&pend) == 0, "sigpending");
	ZCHECK(sigismember(&pend, SIGUSR1), "SIGUSR1 no longer pending");
	ZCHECK(sigismember(&pend, SIGRTMIN + 1), "SIGRTMIN+1 no longer pending");
	ZCHECK(!sigismember(&pend, SIGWINCH), "SIGWINCH pending out of nowhere");
	ZCHECK(usr1_count == 0 && rt_count == 0, "handler ran while blocked");

	ZCHECK(sigprocmask(SIG_UNBLOCK, &blocked, NULL) == 0, "unblock");
	ZCHECK(usr1_count == 1, "SIGUSR1 delivered %d times", (int)usr1_count);
	ZCHECK(rt_count == 2, "SIGRTMIN+1 delivered %d times", (int)rt_count);
	ZCHECK(rt_values[0] == 4242 && rt_values[1] == 4343, "rt values %d %d", rt_values[0],
	       rt_values[1]);
	/* Handlers still work; SA_RESETHAND resets SIGUSR2 after one delivery. */
	raise(SIGUSR2);
	ZCHECK(usr2_count == 1, "SIGUSR2 handler ran %d times", (int)usr2_count);
	struct sigaction after;
	sigaction(SIGUSR2, NULL, &after);
	ZCHECK(after.sa_handler == SIG_DFL, "SA_RESETHAND did not reset");
	raise(SIGPIPE);
	zdtm_pass();
}
