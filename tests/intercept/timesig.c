/* A burst of time calls and nothing else intercepted while SIGALRM arrives from an interval
 * timer: the recorder's fast path delivers each signal at a time call's exit boundary; the
 * handler logs the iteration it saw. Stops after 5 signals (or a bounded number of calls). */
#include <signal.h>
#include <stdio.h>
#include <sys/time.h>
#include <time.h>

static volatile int got;
static volatile long it;
static char seen[512];
static int seenlen;

static void on_alrm(int s) {
    (void)s;
    got++;
    if (seenlen < 400) seenlen += snprintf(seen + seenlen, sizeof seen - seenlen, "@%ld ", it);
}

int main(void) {
    signal(SIGALRM, on_alrm);
    struct itimerval iv = {{0, 2000}, {0, 2000}}, off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &iv, 0);
    struct timespec ts;
    struct timeval tv;
    long acc = 0;
    for (it = 0; it < 50000000 && got < 5; it++) {
        if (it & 1) { clock_gettime(CLOCK_MONOTONIC, &ts); acc += ts.tv_nsec & 1; }
        else { gettimeofday(&tv, 0); acc += tv.tv_usec & 1; }
    }
    setitimer(ITIMER_REAL, &off, 0);
    printf("iterations %ld signals %d acc %ld\n%s\n", it, got, acc, seen);
    return 0;
}
