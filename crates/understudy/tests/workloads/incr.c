/* Incremental-dump workload. Usage: incr DIR MIB [drop]
 * Maps MIB MiB of private anonymous memory; page i holds words derived from (i, gen[i]).
 * With "drop", each round also drops pages (MADV_DONTNEED: 0.5% single pages, and in round 0
 * one aligned 2 MiB block, half of which round 1 writes again and round 2 reads): a dropped
 * page must read as zeros (gen[i] == DROPPED) until it is written again.
 * Writes DIR/pid once ready. Each time DIR/write-N appears it rewrites 1% of the pages
 * (pseudo-random, gen[i]++) and answers DIR/wrote-N. When DIR/go appears it checks every page
 * against gen[] and writes DIR/result ("PASS ..." or "FAIL: ..."). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static char dir[512];
static void put(const char *name, const char *msg) {
    char p[600], t[600]; snprintf(p, sizeof p, "%s/%s", dir, name); snprintf(t, sizeof t, "%s/%s.tmp", dir, name);
    FILE *f = fopen(t, "w"); fputs(msg, f); fclose(f); rename(t, p);
}
static int exists(const char *name) {
    char p[600]; snprintf(p, sizeof p, "%s/%s", dir, name); return access(p, F_OK) == 0;
}
static inline uint64_t word(uint64_t page, uint64_t gen, uint64_t k) {
    uint64_t x = (page << 20) ^ (gen << 40) ^ k ^ 0x9e3779b97f4a7c15ull;
    x ^= x >> 31; x *= 0xbf58476d1ce4e5b9ull; x ^= x >> 29; return x;
}
static void fill(uint64_t *p, uint64_t i, uint64_t g) { for (uint64_t k = 0; k < 512; k++) p[k] = word(i, g, k); }
#define DROPPED 0xffffffffu

int main(int argc, char **argv) {
    snprintf(dir, sizeof dir, "%s", argv[1]);
    close_range(3, ~0U, 0);
    uint64_t npages = (uint64_t)atoi(argv[2]) * 256;
    int drop = argc > 3 && strcmp(argv[3], "drop") == 0;
    uint64_t *mem = mmap(0, npages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint32_t *gen = mmap(0, npages * 4, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED || gen == MAP_FAILED) { put("result", "FAIL: mmap"); return 1; }
    for (uint64_t i = 0; i < npages; i++) fill(mem + i * 512, i, 0);
    uint64_t rng = 0x12345678;
    char b[64];
    snprintf(b, sizeof b, "%d\n", getpid()); put("pid", b);
    for (int n = 0;;) {
        char w[32]; snprintf(w, sizeof w, "write-%d", n);
        if (exists(w)) {
            for (uint64_t c = 0; c < npages / 100; c++) {
                rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
                uint64_t i = rng % npages;
                gen[i] = gen[i] == DROPPED ? 1 : gen[i] + 1;
                fill(mem + i * 512, i, gen[i]);
            }
            if (drop) {
                for (uint64_t c = 0; c < npages / 200; c++) {
                    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
                    uint64_t i = rng % npages;
                    madvise(mem + i * 512, 4096, MADV_DONTNEED);
                    gen[i] = DROPPED;
                }
                /* an aligned 2 MiB block (a whole page table or huge page), from page b */
                uint64_t b = ((((uintptr_t)mem + (2u << 20) - 1) & ~(uintptr_t)((2u << 20) - 1)) - (uintptr_t)mem) / 4096;
                if (n == 0 && b + 512 <= npages) {
                    madvise(mem + b * 512, 2u << 20, MADV_DONTNEED);
                    for (uint64_t i = b; i < b + 512; i++) gen[i] = DROPPED;
                } else if (n == 1 && b + 512 <= npages) {
                    for (uint64_t i = b; i < b + 256; i++) { gen[i] = 1; fill(mem + i * 512, i, 1); }
                } else if (n == 2 && b + 512 <= npages) {
                    volatile uint64_t sink = 0;
                    for (uint64_t i = b + 256; i < b + 512; i++) sink += mem[i * 512];
                    (void)sink;
                }
            }
            snprintf(w, sizeof w, "wrote-%d", n); put(w, "ok");
            n++;
            continue;
        }
        if (exists("go")) {
            uint64_t bad = 0, first = ~0ull, changed = 0;
            for (uint64_t i = 0; i < npages; i++) {
                if (gen[i]) changed++;
                for (uint64_t k = 0; k < 512; k++)
                    if (mem[i * 512 + k] != (gen[i] == DROPPED ? 0 : word(i, gen[i], k))) { bad++; if (first == ~0ull) first = i; break; }
            }
            char r[200];
            if (bad) snprintf(r, sizeof r, "FAIL: %llu of %llu pages differ (first %llu)", (unsigned long long)bad, (unsigned long long)npages, (unsigned long long)first);
            else snprintf(r, sizeof r, "PASS %llu pages, %llu rewritten", (unsigned long long)npages, (unsigned long long)changed);
            put("result", r);
            return bad ? 1 : 0;
        }
        usleep(2000);
    }
}
