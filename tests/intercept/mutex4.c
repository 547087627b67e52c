/* 4 threads contend for a mutex and append to a shared log, update a value under a rwlock, and
 * a condition variable hands a token around (every shared variable has one lock: no data race). The log order depends on scheduling; replay must reproduce it. */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define T 4
#define N 200
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static pthread_rwlock_t rw = PTHREAD_RWLOCK_INITIALIZER;
static char logbuf[T * N * 8 + 64]; static int loglen, turn, shared, rwshared;

static void *worker(void *arg) {
    long id = (long)arg;
    for (int i = 0; i < N; i++) {
        if (i % 25 == 0) { while (pthread_mutex_trylock(&m) != 0) sched_yield(); }
        else pthread_mutex_lock(&m);
        loglen += snprintf(logbuf + loglen, sizeof logbuf - loglen, "%ld", id);
        shared = shared * 31 + (int)id;
        pthread_mutex_unlock(&m);
        if (i % 50 == 0) {
            pthread_rwlock_wrlock(&rw); rwshared = rwshared * 7 + i + (int)id; pthread_rwlock_unlock(&rw);
        }
        pthread_rwlock_rdlock(&rw); int s = rwshared; pthread_rwlock_unlock(&rw); (void)s;
        if (i % 10 == 0) { struct timespec d = {0, 100000}; nanosleep(&d, 0); }
    }
    /* token ring with a condition variable */
    pthread_mutex_lock(&m);
    while (turn != id) pthread_cond_wait(&cv, &m);
    loglen += snprintf(logbuf + loglen, sizeof logbuf - loglen, "[%ld]", id);
    turn++;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&m);
    return 0;
}

int main(void) {
    pthread_t t[T];
    for (long i = 0; i < T; i++) pthread_create(&t[i], 0, worker, (void *)i);
    for (int i = 0; i < T; i++) pthread_join(t[i], 0);
    /* print the interleaving in runs, e.g. 0x37 1x12 ... */
    int run = 1;
    for (int i = 1; i <= loglen; i++) {
        if (i < loglen && logbuf[i] == logbuf[i - 1]) { run++; continue; }
        printf("%cx%d ", logbuf[i - 1], run); run = 1;
    }
    printf("\nshared %d rwshared %d\n", shared, rwshared);
    return 0;
}
