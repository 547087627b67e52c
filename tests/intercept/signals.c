/* Works in a loop of intercepted calls while signals arrive from outside at random moments;
 * the handler logs the iteration at which each signal was seen. Ends after a fixed number of
 * iterations (about 1.5 s) or when SIGTERM arrives. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <poll.h>

static volatile int got, it, stop, eintr;
static char seen[4096]; static int seenlen;

static void on_usr(int s) {
    got++;
    seenlen += snprintf(seen + seenlen, sizeof seen - seenlen, "%s@%d ", s == SIGUSR1 ? "usr1" : "usr2", it);
}
static void on_term(int s) { (void)s; stop = 1; }

int main(void) {
    signal(SIGUSR1, on_usr);
    struct sigaction sa; memset(&sa, 0, sizeof sa); sa.sa_handler = on_usr; sigaction(SIGUSR2, &sa, 0);
    signal(SIGTERM, on_term);
    printf("ready %d\n", getpid()); fflush(stdout);
    struct timespec ts, slp = {0, 1000000};
    long acc = 0;
    for (it = 0; it < 1500 && !stop; it++) {
        clock_gettime(CLOCK_MONOTONIC, &ts);
        acc += ts.tv_nsec % 7;
        /* half the waits in an intercepted call (signals then interrupt it and are delivered
         * at its exit boundary), half outside (delivered at the next call's entry) */
        if (it & 1) { if (poll(0, 0, 1) < 0) eintr++; } else nanosleep(&slp, 0);
    }
    printf("iterations %d signals %d eintr %d acc %ld\n%s\n", it, got, eintr, acc, seen);
    return 0;
}
