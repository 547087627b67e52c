/* Prints the time (several clocks, one of them a CPU-time clock) and random values from every source the interceptor covers. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/time.h>
#include <sys/random.h>

int main(void) {
    struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts);
    printf("realtime %ld.%09ld\n", (long)ts.tv_sec, ts.tv_nsec);
    clock_gettime(CLOCK_MONOTONIC, &ts);
    printf("monotonic %ld.%09ld\n", (long)ts.tv_sec, ts.tv_nsec);
    struct timeval tv; gettimeofday(&tv, 0);
    printf("gettimeofday %ld.%06ld\n", (long)tv.tv_sec, (long)tv.tv_usec);
    printf("time %ld\n", (long)time(0));
    unsigned long long r = 0;
    getrandom(&r, sizeof r, 0); printf("getrandom %016llx\n", r);
    getentropy(&r, sizeof r); printf("getentropy %016llx\n", r);
    int fd = open("/dev/urandom", O_RDONLY); read(fd, &r, sizeof r); close(fd);
    printf("urandom %016llx\n", r);
    FILE *f = fopen("/dev/urandom", "r"); fread(&r, sizeof r, 1, f); fclose(f);
    printf("fread urandom %016llx\n", r);
    srand(time(0) ^ getpid()); printf("rand %d pid-dependent\n", rand());
    /* A CPU-time clock of a negative id and a gettimeofday: the time batch's escaped form
     * beside a delta-coded entry. */
    clockid_t cpu; clock_getcpuclockid(0, &cpu);
    clock_gettime(cpu, &ts); gettimeofday(&tv, 0);
    printf("cpuclock %d %ld.%09ld then %ld.%06ld\n", (int)cpu, (long)ts.tv_sec, ts.tv_nsec, (long)tv.tv_sec, (long)tv.tv_usec);
    /* A failing time call: recorded as a full message, its errno kept. */
    errno = 0;
    int bad = clock_gettime(999, &ts);
    printf("bad clock %d %d\n", bad, errno);
    return 0;
}
