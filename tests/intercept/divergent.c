/* timerand.c's first lines, then something the recording never saw (used as the "modified
 * program" of the divergence test: it is compiled over timerand's binary). */
#include <stdio.h>
#include <time.h>
int main(void) {
    struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts);
    printf("realtime %ld.%09ld\n", (long)ts.tv_sec, ts.tv_nsec);
    clock_gettime(CLOCK_MONOTONIC, &ts);
    printf("monotonic (modified) %ld.%09ld\n", (long)ts.tv_sec, ts.tv_nsec);
    return 0;
}
