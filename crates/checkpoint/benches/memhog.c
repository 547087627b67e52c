/* Benchmark target: touches N MiB of anonymous memory (distinct content per page), writes its
 * pid to argv[2], then sleeps. Usage: memhog MIB PIDFILE */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
    close_range(3, ~0U, 0);
    size_t len = (size_t)atol(argv[1]) << 20;
    char *m = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < len; i += 4096) { m[i] = (char)(i >> 12); m[i + 100] = 1; }
    char t[600]; snprintf(t, sizeof t, "%s.tmp", argv[2]);
    FILE *f = fopen(t, "w"); fprintf(f, "%d %lu\n", getpid(), (unsigned long)m); fclose(f); rename(t, argv[2]);
    for (;;) pause();
}
