/* Mappings that change while dumps run (incremental dumps read the madvise flags before the
 * freeze and must notice a changed mapping). Usage: vmchurn DIR (protocol as mem_single.c).
 * Region R: 8 pages of private anonymous memory between two PROT_NONE guard pages, marked
 * MADV_DONTFORK. Until DIR/go appears the main loop, without pause, splits R (mprotect of pages
 * 2-3 to read-only) and merges it again (back to read-write), writing the step number into
 * page 0 each time. After DIR/go: every mapping inside R must carry VmFlags "dc", R must be
 * laid out either merged (one rw mapping) or split (rw, r, rw), pages 1-7 hold their pattern and
 * page 0 the step reached; result PASS/FAIL. `vmchurn DIR window`: no churn; see below. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define P 4096UL
static char dir[512];
static void result(const char *msg) {
    char p[600], t[600]; snprintf(p, sizeof p, "%s/result", dir); snprintf(t, sizeof t, "%s/result.tmp", dir);
    FILE *f = fopen(t, "w"); fputs(msg, f); fclose(f); rename(t, p);
}
#define FAIL(...) do { char b[700]; snprintf(b, sizeof b, "FAIL: " __VA_ARGS__); result(b); exit(1); } while (0)

static volatile uint64_t intent, done;

int main(int argc, char **argv) {
    snprintf(dir, sizeof dir, "%s", argv[1]);
    close_range(3, ~0U, 0);
    if (chdir(dir)) return 1;
    char *g = mmap(0, 10 * P, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g == MAP_FAILED) FAIL("mmap");
    char *r = mmap(g + P, 8 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (r != g + P) FAIL("mmap fixed");
    if (madvise(r, 8 * P, MADV_DONTFORK)) FAIL("madvise");
    for (unsigned long i = 1; i < 8; i++) memset(r + i * P, (int)(0x40 + i), P);
    FILE *pf = fopen("pid.tmp", "w"); fprintf(pf, "%d\n", getpid()); fclose(pf); rename("pid.tmp", "pid");
    int window = argc > 2 && !strcmp(argv[2], "window");
    /* Window mode: each time DIR/window appears (created by the dump between its pre-read of
     * smaps and the freeze), make one more page read-only (pages 1, 3, 5, 7: a new mapping
     * start each time), then remove the file. */
    for (unsigned long n = 1; window; n++) {
        while (access("window", F_OK) != 0) {
            if (access("go", F_OK) == 0) goto check;
            struct timespec ts = {0, 1000000}; nanosleep(&ts, 0);
        }
        if (n <= 4 && mprotect(r + (2 * n - 1) * P, P, PROT_READ)) FAIL("mprotect");
        unlink("window");
    }
    for (uint64_t k = 1; !window; k++) {
        if ((k & 1023) == 0 && access("go", F_OK) == 0) break;
        intent = k;
        if (mprotect(r + 2 * P, 2 * P, (k & 1) ? PROT_READ : PROT_READ | PROT_WRITE)) FAIL("mprotect");
        *(volatile uint64_t *)r = k;
        done = k;
    }
check:
    /* Check the layout and flags of everything inside R. */
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) FAIL("open smaps");
    char line[512];
    unsigned long s = 0, e = 0, lay[8][2]; char perm[8][5]; int n = 0, in = 0, flagged = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b; char pm[5];
        if (sscanf(line, "%lx-%lx %4s", &a, &b, pm) == 3 && strchr(line, '-') < strchr(line, ' ')) {
            in = a >= (unsigned long)r && b <= (unsigned long)r + 8 * P;
            if (in) {
                if (n == 8) FAIL("more than 8 mappings in the region");
                lay[n][0] = a; lay[n][1] = b; memcpy(perm[n], pm, 5); n++;
            }
            s = a; e = b;
            continue;
        }
        if (in && strncmp(line, "VmFlags:", 8) == 0) {
            if (!strstr(line, " dc")) FAIL("mapping %lx-%lx lost MADV_DONTFORK: %s", s, e, line);
            flagged++;
        }
    }
    fclose(f);
    if (flagged != n) FAIL("%d of %d mappings with flags", flagged, n);
    unsigned long base = (unsigned long)r;
    int merged = n == 1 && lay[0][0] == base && lay[0][1] == base + 8 * P && !strcmp(perm[0], "rw-p");
    int split = n == 3 && lay[0][0] == base && lay[0][1] == base + 2 * P && !strcmp(perm[0], "rw-p") &&
                lay[1][1] == base + 4 * P && !strcmp(perm[1], "r--p") && lay[2][1] == base + 8 * P &&
                !strcmp(perm[2], "rw-p");
    if (!window && !merged && !split) FAIL("region laid out as %d mappings, neither merged nor split", n);
    uint64_t w = *(volatile uint64_t *)r;
    if (w != done && w != intent) FAIL("page 0 holds %llu, steps %llu/%llu", (unsigned long long)w,
                                       (unsigned long long)done, (unsigned long long)intent);
    for (unsigned long i = 1; i < 8; i++)
        for (unsigned long j = 0; j < P; j++)
            if ((unsigned char)r[i * P + j] != 0x40 + i) FAIL("page %lu byte %lu", i, j);
    char msg[200];
    if (window)
        snprintf(msg, sizeof msg, "PASS %d mappings, each with dc", n);
    else
        snprintf(msg, sizeof msg, "PASS %s after %llu steps", merged ? "merged" : "split", (unsigned long long)done);
    result(msg);
    return 0;
}
