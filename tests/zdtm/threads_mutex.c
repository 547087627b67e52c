/*
 * Eight threads take turns under one mutex and one condition variable (strict round robin), so
 * at any instant most of them sleep in a futex wait and one runs. Each keeps thread-local state
 * (a __thread counter, a double accumulator, its TID). After restore: TIDs unchanged, turns
 * still strictly ordered, the shared counter equals the sum of the per-thread counts, progress
 * continues, and every thread can be joined.
 */
#include "zdtm.h"
#include <math.h>
#include <pthread.h>

#define NTHREADS 8

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int turn;
static uint64_t total;
static int stop;
static uint64_t counts[NTHREADS];
static pid_t tids[NTHREADS];
static char errors[NTHREADS][256];
static __thread uint64_t tls_count;
static __thread int tls_id = -1;

static void *worker(void *arg)
{
	int id = (int)(intptr_t)arg;
	tls_id = id;
	pid_t tid = (pid_t)syscall(SYS_gettid);
	double acc = 0.0;
	pthread_mutex_lock(&lock);
	tids[id] = tid;
	pthread_mutex_unlock(&lock);
	for (;;) {
		pthread_mutex_lock(&lock);
		while (turn != id && !stop)
			pthread_cond_wait(&cond, &lock);
		if (stop) {
			pthread_mutex_unlock(&lock);
			break;
		}
		counts[id]++;
		total++;
		tls_count++;
		acc += 0.5;
		turn = (turn + 1) % NTHREADS;
		pthread_cond_broadcast(&cond);
		pthread_mutex_unlock(&lock);
		if (tls_count % 16 == 0)
			zdtm_msleep(1);
	}
	if (tls_id != id)
		snprintf(errors[id], sizeof(errors[id]), "thread %d: tls id %d", id, tls_id);
	else if ((pid_t)syscall(SYS_gettid) != tid)
		snprintf(errors[id], sizeof(errors[id]), "thread %d: tid %d became %d", id, (int)tid,
			 (int)syscall(SYS_gettid));
	else if (tls_count != counts[id])
		snprintf(errors[id], sizeof(errors[id]), "thread %d: tls count %llu vs %llu", id,
			 (unsigned long long)tls_count, (unsigned long long)counts[id]);
	else if (fabs(acc - 0.5 * (double)tls_count) > 1e-9)
		snprintf(errors[id], sizeof(errors[id]), "thread %d: fp accumulator %f vs %f", id, acc,
			 0.5 * (double)tls_count);
	return NULL;
}

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	pthread_t th[NTHREADS];
	for (int i = 0; i < NTHREADS; i++)
		ZCHECK(pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i) == 0, "pthread_create");
	/* Ready once every thread has run a few rounds. */
	for (;;) {
		pthread_mutex_lock(&lock);
		uint64_t t = total;
		pthread_mutex_unlock(&lock);
		if (t > 20 * NTHREADS)
			break;
		zdtm_msleep(2);
	}
	pid_t saved[NTHREADS];
	pthread_mutex_lock(&lock);
	memcpy(saved, tids, sizeof(saved));
	pthread_mutex_unlock(&lock);
	zdtm_ready();
	zdtm_wait_trigger();

	pthread_mutex_lock(&lock);
	uint64_t at_trigger = total;
	pthread_mutex_unlock(&lock);
	uint64_t deadline = zdtm_now_ns() + 20000000000ull;
	for (;;) {
		pthread_mutex_lock(&lock);
		uint64_t t = total;
		pthread_mutex_unlock(&lock);
		if (t >= at_trigger + 10 * NTHREADS)
			break;
		ZCHECK(zdtm_now_ns() < deadline, "no progress after restore: total stuck at %llu",
		       (unsigned long long)t);
		zdtm_msleep(2);
	}
	pthread_mutex_lock(&lock);
	stop = 1;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	for (int i = 0; i < NTHREADS; i++)
		ZCHECK(pthread_join(th[i], NULL) == 0, "pthread_join %d", i);
	for (int i = 0; i < NTHREADS; i++)
		ZCHECK(errors[i][0] == 0, "%s", errors[i]);
	ZCHECK(memcmp(saved, tids, sizeof(saved)) == 0, "tid table changed");
	uint64_t sum = 0;
	for (int i = 0; i < NTHREADS; i++) {
		sum += counts[i];
		/* Strict round robin: counts of threads before `turn` are one ahead. */
		uint64_t expect = counts[0] - (i >= turn && turn != 0 ? 1 : 0);
		ZCHECK(counts[i] == expect, "round robin broken: thread %d count %llu, expected %llu", i,
		       (unsigned long long)counts[i], (unsigned long long)expect);
	}
	ZCHECK(sum == total, "sum of counts %llu != total %llu", (unsigned long long)sum,
	       (unsigned long long)total);
	zdtm_pass();
}
