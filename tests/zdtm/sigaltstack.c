/*
 * An alternate signal stack with an SA_ONSTACK handler. After restore: sigaltstack() reports the
 * same stack, and a raised signal runs its handler on it.
 */
#include "zdtm.h"

#define ALT_SIZE (64 << 10)

static char *alt;
static volatile uintptr_t handler_sp;

static void on_usr1(int sig)
{
	char here;
	(void)sig;
	handler_sp = (uintptr_t)&here;
}

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	alt = malloc(ALT_SIZE);
	ZCHECK(alt, "malloc");
	stack_t ss = { .ss_sp = alt, .ss_size = ALT_SIZE, .ss_flags = 0 };
	ZCHECK(sigaltstack(&ss, NULL) == 0, "sigaltstack");
	struct sigaction sa = { 0 };
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	ZCHECK(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction");
	raise(SIGUSR1);
	ZCHECK(handler_sp >= (uintptr_t)alt && handler_sp < (uintptr_t)alt + ALT_SIZE,
	       "handler did not run on the alternate stack before checkpoint");
	zdtm_ready();
	zdtm_wait_trigger();
	stack_t got;
	ZCHECK(sigaltstack(NULL, &got) == 0, "sigaltstack query");
	ZCHECK(got.ss_sp == alt && got.ss_size == ALT_SIZE && !(got.ss_flags & SS_DISABLE),
	       "alternate stack is %p+%zu flags %d, expected %p+%d", got.ss_sp, got.ss_size,
	       got.ss_flags, (void *)alt, ALT_SIZE);
	handler_sp = 0;
	raise(SIGUSR1);
	ZCHECK(handler_sp >= (uintptr_t)alt && handler_sp < (uintptr_t)alt + ALT_SIZE,
	       "handler ran at sp %p, outside the alternate stack", (void *)handler_sp);
	zdtm_pass();
}
