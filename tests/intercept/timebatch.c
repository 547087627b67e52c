/* Many time calls between outputs, so the interceptor emits them as time batches.
 *   timebatch            two threads: time calls inside and outside a shared lock, then output
 *   timebatch fork       time calls, fork; the child makes its own, both print theirs
 *   timebatch exec       time calls, then execl of itself with their sum as an argument
 *   timebatch show SUM   (the exec'd image) prints SUM and one time value of its own
 *   timebatch loop N     N rounds of 40 time calls and one 1 ms poll (for the quiesce test) */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;

/* The divergence test compiles modified programs: -DVARIANT=-1 / 1 makes one time call fewer /
 * more in loop mode's first round, -DVARIANT=9 reads another clock there. */
#ifndef VARIANT
#define VARIANT 0
#endif

static long burst(int n) {
    struct timespec ts; struct timeval tv; long acc = 0;
    for (int i = 0; i < n; i++) {
        clock_gettime(i % 3 ? CLOCK_MONOTONIC : CLOCK_REALTIME, &ts);
        gettimeofday(&tv, 0);
        acc = acc * 31 + ts.tv_nsec % 1000003 + tv.tv_usec;
    }
    return acc;
}

static void *worker(void *arg) {
    long id = (long)arg, acc = 0;
    struct timeval tv;
    for (int i = 0; i < 200; i++) {
        pthread_mutex_lock(&m);
        gettimeofday(&tv, 0);       /* buffered while the lock is held */
        pthread_mutex_unlock(&m);   /* emits the buffered result: the other thread may print it */
        for (volatile int k = 0; k < 20000; k++) /* let the other thread take the lock first */
            ;
        acc = acc * 7 + tv.tv_usec + burst(1);
    }
    acc += burst(50);
    pthread_mutex_lock(&m);
    printf("thread %ld: %ld\n", id, acc);
    fflush(stdout);
    pthread_mutex_unlock(&m);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 2 && !strcmp(argv[1], "show")) {
        printf("exec'd with %s, then %ld\n", argv[2], burst(3));
        return 0;
    }
    if (argc > 1 && !strcmp(argv[1], "exec")) {
        char sum[32];
        snprintf(sum, sizeof sum, "%ld", burst(41));
        execl(argv[0], argv[0], "show", sum, (char *)0);
        perror("execl");
        return 1;
    }
    if (argc > 1 && !strcmp(argv[1], "fork")) {
        long before = burst(20);
        pid_t c = fork();
        if (c == 0) {
            printf("child: %ld %ld\n", before, burst(20));
            fflush(stdout);
            _exit(0);
        }
        int st;
        waitpid(c, &st, 0);
        printf("parent: %ld %ld status %d\n", before, burst(5), WEXITSTATUS(st));
        return 0;
    }
    if (argc > 2 && !strcmp(argv[1], "loop")) {
        long acc = 0;
        for (int r = 0, n = atoi(argv[2]); r < n; r++) {
            struct timespec ts;
            struct timeval tv;
            if (r == 0 && VARIANT == 9) { /* another clock first */
                clock_gettime(CLOCK_BOOTTIME, &ts);
                acc += ts.tv_nsec;
            }
            acc += burst(VARIANT == -1 && r == 0 ? 19 : 20);
            if (r == 0 && VARIANT == -1) { /* the 39th call, not the 40th */
                clock_gettime(CLOCK_MONOTONIC, &ts);
                acc += ts.tv_nsec;
            }
            if (r == 0 && VARIANT == 1) { /* a 41st */
                gettimeofday(&tv, 0);
                acc += tv.tv_usec;
            }
            poll(0, 0, 1);
        }
        printf("loop: %ld\n", acc);
        return 0;
    }
    pthread_t t[2];
    for (long i = 0; i < 2; i++) pthread_create(&t[i], 0, worker, (void *)i);
    long acc = burst(100);
    for (int i = 0; i < 2; i++) pthread_join(t[i], 0);
    printf("main: %ld\n", acc);
    return 0;
}
