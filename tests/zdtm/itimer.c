/*
 * Interval timers: ITIMER_REAL firing every 20 ms into a SIGALRM handler, and a long
 * ITIMER_VIRTUAL. After restore: both intervals are unchanged, the remaining time is within
 * the interval, and SIGALRM keeps firing.
 */
#include "zdtm.h"
#include <sys/time.h>

static volatile sig_atomic_t ticks;

static void on_alarm(int sig)
{
	(void)sig;
	ticks++;
}

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	struct sigaction sa = { 0 };
	sa.sa_handler = on_alarm;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	ZCHECK(sigaction(SIGALRM, &sa, NULL) == 0, "sigaction");
	struct itimerval real = { { 0, 20000 }, { 0, 20000 } };
	struct itimerval virt = { { 30, 0 }, { 40, 0 } };
	ZCHECK(setitimer(ITIMER_REAL, &real, NULL) == 0, "setitimer real");
	ZCHECK(setitimer(ITIMER_VIRTUAL, &virt, NULL) == 0, "setitimer virtual");
	while (ticks < 3)
		zdtm_msleep(5);
	zdtm_ready();
	zdtm_wait_trigger();
	struct itimerval got;
	ZCHECK(getitimer(ITIMER_REAL, &got) == 0, "getitimer real");
	ZCHECK(got.it_interval.tv_sec == 0 && got.it_interval.tv_usec == 20000,
	       "ITIMER_REAL interval %ld.%06ld", (long)got.it_interval.tv_sec,
	       (long)got.it_interval.tv_usec);
	ZCHECK(got.it_value.tv_sec == 0 && got.it_value.tv_usec <= 20000, "ITIMER_REAL value %ld.%06ld",
	       (long)got.it_value.tv_sec, (long)got.it_value.tv_usec);
	ZCHECK(getitimer(ITIMER_VIRTUAL, &got) == 0, "getitimer virtual");
	ZCHECK(got.it_interval.tv_sec == 30 && got.it_interval.tv_usec == 0,
	       "ITIMER_VIRTUAL interval %ld.%06ld", (long)got.it_interval.tv_sec,
	       (long)got.it_interval.tv_usec);
	ZCHECK(got.it_value.tv_sec > 0 && got.it_value.tv_sec <= 40, "ITIMER_VIRTUAL value %ld",
	       (long)got.it_value.tv_sec);
	sig_atomic_t before = ticks;
	uint64_t deadline = zdtm_now_ns() + 20000000000ull;
	while (ticks < before + 5) {
		ZCHECK(zdtm_now_ns() < deadline, "SIGALRM stopped firing after restore (%d ticks)",
		       (int)(ticks - before));
		zdtm_msleep(5);
	}
	zdtm_pass();
}
