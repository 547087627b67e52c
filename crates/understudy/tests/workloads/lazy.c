/* Lazy-restore workload. Usage: lazy DIR MIB
 * Maps MIB MiB of private anonymous memory, page i filled with words derived from i.
 * Creates the FIFOs DIR/req and DIR/ans (both opened read-write, so they never block or see
 * end of file), writes DIR/pid, then serves one-byte requests read from DIR/req:
 *   'p'  answers "pong\n" (the bench's first response after a restore);
 *   'q'  answers "missing N of M\n": how many of the M pages of the region are not in memory
 *        right now (mincore; it does not touch them), the proof that a lazy restore answered
 *        before all memory was in place;
 *   'c'  checks every page and answers "PASS ...\n" or "FAIL: ...\n" (also to DIR/result).
 * It blocks in read() when idle, so a checkpoint finds it there. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[512];
static void put(const char *name, const char *msg) {
    char p[600], t[600]; snprintf(p, sizeof p, "%s/%s", dir, name); snprintf(t, sizeof t, "%s/%s.tmp", dir, name);
    FILE *f = fopen(t, "w"); fputs(msg, f); fclose(f); rename(t, p);
}
static inline uint64_t word(uint64_t page, uint64_t k) {
    uint64_t x = (page << 20) ^ k ^ 0x9e3779b97f4a7c15ull;
    x ^= x >> 31; x *= 0xbf58476d1ce4e5b9ull; x ^= x >> 29; return x;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    snprintf(dir, sizeof dir, "%s", argv[1]);
    close_range(3, ~0U, 0);
    uint64_t npages = (uint64_t)atoi(argv[2]) * 256;
    uint64_t *mem = mmap(0, npages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *vec = mmap(0, npages, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED || vec == MAP_FAILED) { put("result", "FAIL: mmap"); return 1; }
    for (uint64_t i = 0; i < npages; i++)
        for (uint64_t k = 0; k < 512; k++) mem[i * 512 + k] = word(i, k);
    char p[600];
    snprintf(p, sizeof p, "%s/req", dir); mkfifo(p, 0600);
    int req = open(p, O_RDWR);
    snprintf(p, sizeof p, "%s/ans", dir); mkfifo(p, 0600);
    int ans = open(p, O_RDWR);
    if (req < 0 || ans < 0) { put("result", "FAIL: fifo"); return 1; }
    char b[200];
    snprintf(b, sizeof b, "%d\n", getpid()); put("pid", b);
    for (;;) {
        char c;
        ssize_t n = read(req, &c, 1);
        if (n != 1) continue;
        if (c == 'p') {
            if (write(ans, "pong\n", 5) != 5) return 1;
        } else if (c == 'q') {
            uint64_t missing = 0;
            if (mincore(mem, npages * 4096, vec) != 0) { put("result", "FAIL: mincore"); return 1; }
            for (uint64_t i = 0; i < npages; i++) missing += !(vec[i] & 1);
            int l = snprintf(b, sizeof b, "missing %llu of %llu\n", (unsigned long long)missing, (unsigned long long)npages);
            if (write(ans, b, l) != l) return 1;
        } else if (c == 'c') {
            uint64_t bad = 0, first = ~0ull;
            for (uint64_t i = 0; i < npages; i++)
                for (uint64_t k = 0; k < 512; k++)
                    if (mem[i * 512 + k] != word(i, k)) { bad++; if (first == ~0ull) first = i; break; }
            int l;
            if (bad) l = snprintf(b, sizeof b, "FAIL: %llu of %llu pages differ (first %llu)\n", (unsigned long long)bad, (unsigned long long)npages, (unsigned long long)first);
            else l = snprintf(b, sizeof b, "PASS %llu pages\n", (unsigned long long)npages);
            put("result", b);
            if (write(ans, b, l) != l) return 1;
        }
    }
}
