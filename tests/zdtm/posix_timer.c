/*
 * POSIX timers: a periodic CLOCK_MONOTONIC timer every 20 ms signalling SIGRTMIN+2 with a
 * value, and a disarmed CLOCK_REALTIME timer. After restore both timer ids still work:
 * timer_gettime reports the interval (and the disarmed one stays disarmed), and the periodic one
 * keeps firing with its value.
 */
#include "zdtm.h"

static volatile sig_atomic_t ticks;
static volatile int last_value;

static void on_tick(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	last_value = si->si_value.sival_int;
	ticks++;
}

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	struct sigaction sa = { 0 };
	sa.sa_sigaction = on_tick;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	ZCHECK(sigaction(SIGRTMIN + 2, &sa, NULL) == 0, "sigaction");
	struct sigevent ev = { 0 };
	ev.sigev_notify = SIGEV_SIGNAL;
	ev.sigev_signo = SIGRTMIN + 2;
	ev.sigev_value.sival_int = 777;
	timer_t periodic, idle;
	ZCHECK(timer_create(CLOCK_MONOTONIC, &ev, &periodic) == 0, "timer_create periodic");
	ev.sigev_value.sival_int = 888;
	ZCHECK(timer_create(CLOCK_REALTIME, &ev, &idle) == 0, "timer_create idle");
	struct itimerspec its = { { 0, 20000000 }, { 0, 20000000 } };
	ZCHECK(timer_settime(periodic, 0, &its, NULL) == 0, "timer_settime");
	while (ticks < 3)
		zdtm_msleep(5);
	zdtm_ready();
	zdtm_wait_trigger();
	struct itimerspec got;
	ZCHECK(timer_gettime(periodic, &got) == 0, "timer_gettime periodic (id lost?)");
	ZCHECK(got.it_interval.tv_sec == 0 && got.it_interval.tv_nsec == 20000000,
	       "periodic interval %ld.%09ld", (long)got.it_interval.tv_sec, got.it_interval.tv_nsec);
	ZCHECK(timer_gettime(idle, &got) == 0, "timer_gettime idle (id lost?)");
	ZCHECK(got.it_value.tv_sec == 0 && got.it_value.tv_nsec == 0, "idle timer armed");
	sig_atomic_t before = ticks;
	uint64_t deadline = zdtm_now_ns() + 5000000000ull;
	while (ticks < before + 5) {
		ZCHECK(zdtm_now_ns() < deadline, "the periodic timer stopped after restore");
		zdtm_msleep(5);
	}
	ZCHECK(last_value == 777, "timer signal value %d", last_value);
	zdtm_pass();
}
