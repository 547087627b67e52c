/* 8 threads busy under a mutex and a condition variable, each with its own TLS value; one
 * more thread blocked in a raw futex wait, one in nanosleep, one in read on a pipe.
 * Usage: threads8 DIR (protocol as mem_single.c). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define N 8
static char dir[512];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static unsigned long turn, total, per[N];
static volatile int stop;
static __thread int my_index = -1;
static __thread double my_fp;
static int tids[N + 3];
static int futex_word;
static int pfd[2];
static volatile int futex_woken, sleeper_done, reader_got;

static void result(const char *msg) {
    char p[600], t[600]; snprintf(p, sizeof p, "%s/result", dir); snprintf(t, sizeof t, "%s/result.tmp", dir);
    FILE *f = fopen(t, "w"); fputs(msg, f); fclose(f); rename(t, p);
}
#define FAIL(...) do { char b[300]; snprintf(b, sizeof b, "FAIL: " __VA_ARGS__); result(b); exit(1); } while (0)

static void *worker(void *a) {
    int i = (int)(long)a; my_index = i; my_fp = i * 1.5; tids[i] = syscall(SYS_gettid);
    for (;;) {
        pthread_mutex_lock(&mu);
        while (turn % N != (unsigned)i && !stop) pthread_cond_wait(&cv, &mu);
        if (stop) { pthread_mutex_unlock(&mu); break; }
        turn++; total++; per[i]++;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
        if (my_index != i || my_fp != i * 1.5) FAIL("thread %d lost its TLS", i);
        if (syscall(SYS_gettid) != tids[i]) FAIL("thread %d changed tid", i);
        if (per[i] % 64 == 0) { struct timespec ts = {0, 1000000}; nanosleep(&ts, 0); }
    }
    return 0;
}
static void *futex_waiter(void *a) {
    (void)a; tids[N] = syscall(SYS_gettid);
    while (__atomic_load_n(&futex_word, __ATOMIC_SEQ_CST) == 0)
        syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, 0, 0, 0);
    futex_woken = 1; return 0;
}
static void *sleeper(void *a) {
    (void)a; tids[N + 1] = syscall(SYS_gettid);
    struct timespec t0, t1; clock_gettime(CLOCK_MONOTONIC, &t0);
    struct timespec ts = {3, 0}; while (nanosleep(&ts, &ts) != 0) ;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    sleeper_done = (t1.tv_sec - t0.tv_sec) >= 3 ? 1 : -1; return 0;
}
static void *reader(void *a) {
    (void)a; tids[N + 2] = syscall(SYS_gettid);
    char c; ssize_t n = read(pfd[0], &c, 1);
    reader_got = (n == 1 && c == 'R') ? 1 : -1; return 0;
}

int main(int argc, char **argv) {
    (void)argc; snprintf(dir, sizeof dir, "%s", argv[1]);
    close_range(3, ~0U, 0);
    pipe(pfd);
    pthread_t th[N + 3];
    for (long i = 0; i < N; i++) pthread_create(&th[i], 0, worker, (void *)i);
    pthread_create(&th[N], 0, futex_waiter, 0);
    pthread_create(&th[N + 1], 0, sleeper, 0);
    pthread_create(&th[N + 2], 0, reader, 0);
    usleep(100000);
    chdir(dir);
    FILE *pf = fopen("pid.tmp", "w"); fprintf(pf, "%d\n", getpid()); fclose(pf); rename("pid.tmp", "pid");
    while (access("go", F_OK) != 0) { struct timespec ts = {0, 2000000}; nanosleep(&ts, 0); }
    /* Progress after restore: wait (at least 20 s in all) for the count to move; a fixed 50 ms
     * is not enough for the workers to be scheduled on a loaded machine. */
    unsigned long t1 = __atomic_load_n(&total, __ATOMIC_RELAXED);
    for (int i = 0; i < 2000 && __atomic_load_n(&total, __ATOMIC_RELAXED) == t1; i++) usleep(10000);
    if (__atomic_load_n(&total, __ATOMIC_RELAXED) == t1) FAIL("workers stopped making progress");
    __atomic_store_n(&futex_word, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, &futex_word, FUTEX_WAKE_PRIVATE, 1, 0, 0, 0);
    write(pfd[1], "R", 1);
    pthread_mutex_lock(&mu); stop = 1; pthread_cond_broadcast(&cv); pthread_mutex_unlock(&mu);
    for (int i = 0; i < N + 3; i++) pthread_join(th[i], 0);
    if (!futex_woken) FAIL("futex waiter");
    if (reader_got != 1) FAIL("reader got %d", reader_got);
    if (sleeper_done != 1) FAIL("sleeper %d", sleeper_done);
    unsigned long sum = 0; for (int i = 0; i < N; i++) sum += per[i];
    if (sum != total) FAIL("counts %lu != %lu", sum, total);
    char msg[100]; snprintf(msg, sizeof msg, "PASS %lu", total); result(msg);
    return 0;
}
