/*
 * POSIX timers, checked after restore:
 *  - a periodic CLOCK_MONOTONIC timer every 20 ms signalling SIGRTMIN+2 with value 777 keeps
 *    firing with its value and interval;
 *  - a disarmed CLOCK_REALTIME timer stays disarmed;
 *  - a CLOCK_MONOTONIC one-shot of 60 s stays armed, one-shot, with no more time left than it
 *    had when the state was built (it was not re-armed from scratch);
 *  - a periodic SIGEV_THREAD_ID timer (SIGRTMIN+3, value 999) keeps signalling the same worker
 *    thread;
 *  - the ids have a gap (the first timer was deleted), kept by the restore;
 *  - /proc/self/timers lists the same ids with the same clocks, signals, values and kinds of
 *    target (process or thread).
 */
#include "zdtm.h"
#include <pthread.h>

static volatile sig_atomic_t ticks, thread_ticks;
static volatile int last_value, thread_value, wrong_thread;
static volatile pid_t worker_tid;

static void on_tick(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	last_value = si->si_value.sival_int;
	ticks++;
}

static void on_thread_tick(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	thread_value = si->si_value.sival_int;
	if ((pid_t)syscall(SYS_gettid) != worker_tid)
		wrong_thread = 1;
	thread_ticks++;
}

static void *worker(void *arg)
{
	(void)arg;
	worker_tid = (pid_t)syscall(SYS_gettid);
	for (;;)
		zdtm_msleep(5);
	return NULL;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* /proc/self/timers as one line per timer ("ID|signal|notify|ClockID"), sorted (the kernel
 * lists them in no set order). The pid or tid after "notify: how/pid." is left out: /proc may
 * be the host's, whose (outer) pids change across a restore into a new PID namespace; the
 * handlers check the target thread themselves. */
static void timers_text(char *out, size_t len)
{
	static char raw[8192];
	static char lines[32][256];
	int fd = open("/proc/self/timers", O_RDONLY);
	ZCHECK(fd >= 0, "open /proc/self/timers");
	ssize_t n = read(fd, raw, sizeof(raw) - 1);
	close(fd);
	ZCHECK(n > 0, "read /proc/self/timers");
	raw[n] = 0;
	int nb = -1;
	for (char *line = strtok(raw, "\n"); line; line = strtok(NULL, "\n")) {
		if (strncmp(line, "ID:", 3) == 0) {
			ZCHECK(nb < 31, "too many timers");
			lines[++nb][0] = 0;
		}
		if (nb < 0)
			continue;
		char field[128];
		snprintf(field, sizeof(field), "%s", line);
		if (strncmp(field, "notify:", 7) == 0) {
			char *dot = strchr(field, '.');
			if (dot)
				*dot = 0;
		}
		size_t used = strlen(lines[nb]);
		snprintf(lines[nb] + used, sizeof(lines[nb]) - used, "%s|", field);
	}
	char *sorted[32];
	for (int i = 0; i <= nb; i++)
		sorted[i] = lines[i];
	qsort(sorted, (size_t)(nb + 1), sizeof(sorted[0]), cmp_str);
	out[0] = 0;
	for (int i = 0; i <= nb; i++) {
		strncat(out, sorted[i], len - strlen(out) - 2);
		strncat(out, "\n", len - strlen(out) - 1);
	}
}

static uint64_t ns(struct timespec t)
{
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	struct sigaction sa = { 0 };
	sa.sa_sigaction = on_tick;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	ZCHECK(sigaction(SIGRTMIN + 2, &sa, NULL) == 0, "sigaction");
	sa.sa_sigaction = on_thread_tick;
	ZCHECK(sigaction(SIGRTMIN + 3, &sa, NULL) == 0, "sigaction");
	/* Only the worker takes the thread-directed signal's handler path: block it here. */
	sigset_t rt3;
	sigemptyset(&rt3);
	sigaddset(&rt3, SIGRTMIN + 3);
	pthread_t th;
	ZCHECK(pthread_create(&th, NULL, worker, NULL) == 0, "pthread_create");
	while (!worker_tid)
		zdtm_msleep(1);
	ZCHECK(pthread_sigmask(SIG_BLOCK, &rt3, NULL) == 0, "sigmask");

	struct sigevent ev = { 0 };
	ev.sigev_notify = SIGEV_SIGNAL;
	ev.sigev_signo = SIGRTMIN + 2;
	ev.sigev_value.sival_int = 777;
	timer_t periodic, idle, oneshot, directed, gone;
	/* The first id is freed again: the ids to restore have a gap below them. */
	struct sigevent none = { 0 };
	none.sigev_notify = SIGEV_NONE;
	ZCHECK(timer_create(CLOCK_MONOTONIC, &none, &gone) == 0, "timer_create gone");
	ZCHECK(timer_create(CLOCK_MONOTONIC, &ev, &periodic) == 0, "timer_create periodic");
	ev.sigev_value.sival_int = 888;
	ZCHECK(timer_create(CLOCK_REALTIME, &ev, &idle) == 0, "timer_create idle");
	ev.sigev_value.sival_int = 555;
	ZCHECK(timer_create(CLOCK_MONOTONIC, &ev, &oneshot) == 0, "timer_create one-shot");
	ev.sigev_notify = SIGEV_THREAD_ID;
	ev.sigev_signo = SIGRTMIN + 3;
	ev.sigev_value.sival_int = 999;
	ev._sigev_un._tid = worker_tid;
	ZCHECK(timer_create(CLOCK_MONOTONIC, &ev, &directed) == 0, "timer_create thread-directed");
	ZCHECK(timer_delete(gone) == 0, "timer_delete");
	struct itimerspec its = { { 0, 20000000 }, { 0, 20000000 } };
	ZCHECK(timer_settime(periodic, 0, &its, NULL) == 0, "timer_settime");
	ZCHECK(timer_settime(directed, 0, &its, NULL) == 0, "timer_settime directed");
	struct itimerspec once = { { 0, 0 }, { 60, 0 } };
	ZCHECK(timer_settime(oneshot, 0, &once, NULL) == 0, "timer_settime one-shot");
	while (ticks < 3 || thread_ticks < 3)
		zdtm_msleep(5);
	static char before[4096], after[4096];
	timers_text(before, sizeof(before));
	struct itimerspec got;
	ZCHECK(timer_gettime(oneshot, &got) == 0, "timer_gettime one-shot");
	uint64_t oneshot_left = ns(got.it_value);
	zdtm_ready();
	zdtm_wait_trigger();

	ZCHECK(timer_gettime(periodic, &got) == 0, "timer_gettime periodic (id lost?)");
	ZCHECK(got.it_interval.tv_sec == 0 && got.it_interval.tv_nsec == 20000000,
	       "periodic interval %ld.%09ld", (long)got.it_interval.tv_sec, got.it_interval.tv_nsec);
	ZCHECK(timer_gettime(idle, &got) == 0, "timer_gettime idle (id lost?)");
	ZCHECK(got.it_value.tv_sec == 0 && got.it_value.tv_nsec == 0, "idle timer armed");
	ZCHECK(timer_gettime(oneshot, &got) == 0, "timer_gettime one-shot (id lost?)");
	ZCHECK(ns(got.it_interval) == 0, "one-shot got an interval");
	ZCHECK(ns(got.it_value) > 0, "one-shot disarmed after restore");
	ZCHECK(ns(got.it_value) <= oneshot_left, "one-shot has more time left (%llu ns) than before (%llu ns)",
	       (unsigned long long)ns(got.it_value), (unsigned long long)oneshot_left);
	timers_text(after, sizeof(after));
	if (strcmp(before, after) != 0) {
		zdtm_log("/proc/self/timers before:\n%s\nafter:\n%s", before, after);
		zdtm_fail("/proc/self/timers differs (see the log)");
	}

	sig_atomic_t before_ticks = ticks, before_thread = thread_ticks;
	uint64_t deadline = zdtm_now_ns() + 20000000000ull;
	while (ticks < before_ticks + 5 || thread_ticks < before_thread + 5) {
		ZCHECK(zdtm_now_ns() < deadline, "a periodic timer stopped after restore (%d, %d ticks)",
		       (int)(ticks - before_ticks), (int)(thread_ticks - before_thread));
		zdtm_msleep(5);
	}
	ZCHECK(last_value == 777, "timer signal value %d", last_value);
	ZCHECK(thread_value == 999, "thread timer signal value %d", thread_value);
	ZCHECK(!wrong_thread, "the thread-directed timer signalled another thread");
	zdtm_pass();
}
