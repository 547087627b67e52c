// Probe (branch dump6): do two threads `pwrite`-ing 1 MiB blocks into ONE fresh file take turns
// (ext4's buffered write holds the inode's i_rwsem exclusively for the whole write), against
// the same blocks split over TWO files, one per thread? Usage: pwrite_lock DIR MiB MODE with
// MODE 1 (one file, blocks interleaved between the threads, like the dump's copy workers) or
// 2 (two files, one per thread). Prints wall and CPU seconds (all threads), the voluntary
// context switches (sleeps on the lock) and each thread's run-queue wait (schedstat).
// Build: gcc -O2 -pthread -o pwrite_lock pwrite_lock.c. Figures: docs/PERFORMANCE.md.
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define MB (1 << 20)
static int nblocks, two, fds[2];
static long long waitns[2];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *worker(void *a) {
    long id = (long)a;
    char *buf = aligned_alloc(4096, MB);
    memset(buf, (int)id + 1, MB);
    for (int b = (int)id; b < nblocks; b += 2) {
        int fd = two ? fds[id] : fds[0];
        off_t off = two ? (off_t)(b / 2) * MB : (off_t)b * MB;
        if (pwrite(fd, buf, MB, off) != MB) {
            perror("pwrite");
            exit(1);
        }
    }
    FILE *f = fopen("/proc/thread-self/schedstat", "r");
    long long run = 0, wt = 0;
    if (f) {
        if (fscanf(f, "%lld %lld", &run, &wt) != 2) wt = 0;
        fclose(f);
    }
    waitns[id] = wt;
    free(buf);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s DIR MiB 1|2\n", argv[0]);
        return 2;
    }
    nblocks = atoi(argv[2]);
    two = atoi(argv[3]) == 2;
    char p0[512], p1[512];
    snprintf(p0, sizeof p0, "%s/pwrite_lock.0", argv[1]);
    snprintf(p1, sizeof p1, "%s/pwrite_lock.1", argv[1]);
    unlink(p0);
    unlink(p1);
    fds[0] = open(p0, O_CREAT | O_RDWR | O_TRUNC, 0600);
    fds[1] = open(p1, O_CREAT | O_RDWR | O_TRUNC, 0600);
    if (fds[0] < 0 || fds[1] < 0) {
        perror("open");
        return 1;
    }
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    double t0 = now();
    pthread_t th[2];
    for (long i = 0; i < 2; i++) pthread_create(&th[i], 0, worker, (void *)i);
    for (int i = 0; i < 2; i++) pthread_join(th[i], 0);
    double t1 = now();
    getrusage(RUSAGE_SELF, &r1);
    double cpu = (r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) + (r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) +
                 ((r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) + (r1.ru_stime.tv_usec - r0.ru_stime.tv_usec)) * 1e-6;
    printf("%s: %d MiB wall %.3f s (%.2f GB/s) cpu %.3f s, voluntary switches %ld, run-queue wait %.3f / %.3f s\n",
           two ? "two files" : "one file ", nblocks, t1 - t0, nblocks * (double)MB / (t1 - t0) / 1e9, cpu,
           r1.ru_nvcsw - r0.ru_nvcsw, waitns[0] * 1e-9, waitns[1] * 1e-9);
    unlink(p0);
    unlink(p1);
    return 0;
}
