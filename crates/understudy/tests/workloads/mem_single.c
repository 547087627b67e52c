/* Single-threaded memory patterns: anonymous, heap, file-backed private, read-only, PROT_NONE,
 * plus a signal handler, a blocked signal and a cwd/umask. Usage: mem_single DIR
 * Writes DIR/pid once ready; loops checking its state; when DIR/go appears, verifies
 * everything and writes DIR/result ("PASS" or "FAIL: why"). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char dir[512];
static volatile sig_atomic_t got_usr1;
static void on_usr1(int s) { (void)s; got_usr1++; }
static void result(const char *msg) {
    char p[600], t[600]; snprintf(p, sizeof p, "%s/result", dir); snprintf(t, sizeof t, "%s/result.tmp", dir);
    FILE *f = fopen(t, "w"); fputs(msg, f); fclose(f); rename(t, p);
}
#define FAIL(...) do { char b[300]; snprintf(b, sizeof b, "FAIL: " __VA_ARGS__); result(b); exit(1); } while (0)

int main(int argc, char **argv) {
    snprintf(dir, sizeof dir, "%s", argv[1]);
    close_range(3, ~0U, 0); /* nothing inherited from the test harness */
    size_t A = 8 << 20;
    unsigned char *anon = mmap(0, A, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < A; i += 4096) anon[i] = (unsigned char)(i >> 12) ^ 0x5a;
    /* sparse: touch only every 4th page of another region */
    unsigned char *sparse = mmap(0, A, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < A; i += 4 * 4096) sparse[i + 7] = 0xa5;
    char *heap = malloc(1 << 20);
    for (int i = 0; i < (1 << 20); i++) heap[i] = (char)(i * 7);
    char fpath[600]; snprintf(fpath, sizeof fpath, "%s/data.bin", dir);
    int fd = open(fpath, O_RDWR | O_CREAT | O_TRUNC, 0644);
    char blk[8192]; memset(blk, 'F', sizeof blk); write(fd, blk, sizeof blk);
    char *fm = mmap(0, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    fm[4096] = 'P'; /* private copy of page 2 only */
    close(fd);
    char *ro = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    strcpy(ro, "read-only-data"); mprotect(ro, 4096, PROT_READ);
    char *pn = mmap(0, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    strcpy(pn + 4096, "secret-in-PROT_NONE"); mprotect(pn + 4096, 4096, PROT_NONE);
    /* madvise state and an anonymous mapping name */
    char *adv = mmap(0, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    madvise(adv, 4096, MADV_DONTFORK);
    madvise(adv + 2 * 4096, 4096, MADV_WIPEONFORK);
    adv[0] = 1; adv[2 * 4096] = 2;
    char *named = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int named_ok = prctl(0x53564d41, 0, named, 4096, "understudy-test") == 0;
    named[0] = 'n';
    signal(SIGUSR1, on_usr1);
    sigset_t m; sigemptyset(&m); sigaddset(&m, SIGUSR2); sigprocmask(SIG_BLOCK, &m, 0);
    raise(SIGUSR2); /* stays pending */
    umask(027);
    chdir(dir);
    double x = 1.0; /* FPU state in a register across the loop */
    char p[600]; snprintf(p, sizeof p, "%s/pid", dir);
    FILE *pf = fopen("pid.tmp", "w"); fprintf(pf, "%d\n", getpid()); fclose(pf); rename("pid.tmp", p);
    unsigned long iter = 0;
    struct timespec t0; clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        iter++; x = x * 1.0000001;
        struct timespec ts = {0, 2000000}; nanosleep(&ts, 0);
        struct timespec now; clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec < t0.tv_sec) FAIL("monotonic clock went back");
        if (access("go", F_OK) == 0) break;
    }
    for (size_t i = 0; i < A; i += 4096) if (anon[i] != ((unsigned char)(i >> 12) ^ 0x5a)) FAIL("anon page %zu", i >> 12);
    for (size_t i = 0; i < A; i += 4096) {
        unsigned char want = (i % (4 * 4096) == 0) ? 0xa5 : 0;
        if (sparse[i + 7] != want) FAIL("sparse page %zu", i >> 12);
    }
    for (int i = 0; i < (1 << 20); i++) if (heap[i] != (char)(i * 7)) FAIL("heap byte %d", i);
    if (fm[0] != 'F' || fm[4096] != 'P' || fm[4097] != 'F') FAIL("file private mapping");
    if (strcmp(ro, "read-only-data")) FAIL("read-only region");
    mprotect(pn + 4096, 4096, PROT_READ);
    if (strcmp(pn + 4096, "secret-in-PROT_NONE")) FAIL("PROT_NONE region");
    sigset_t pend; sigpending(&pend); if (!sigismember(&pend, SIGUSR2)) FAIL("SIGUSR2 no longer pending");
    sigset_t cur; sigprocmask(SIG_BLOCK, 0, &cur); if (!sigismember(&cur, SIGUSR2)) FAIL("sigmask lost");
    raise(SIGUSR1); if (got_usr1 != 1) FAIL("SIGUSR1 handler not restored");
    mode_t um = umask(0); if (um != 027) FAIL("umask %o", um);
    char cwd[600]; getcwd(cwd, sizeof cwd); if (strcmp(cwd, dir)) FAIL("cwd %s", cwd);
    void *b1 = sbrk(0); char *more = malloc(4 << 20); memset(more, 1, 4 << 20); (void)b1;
    if (x < 1.0) FAIL("fpu");
    {
        /* VmFlags of the madvised pages, and the mapping name */
        FILE *sm = fopen("/proc/self/smaps", "r"); char line[512]; unsigned long cur = 0; int dc = 0, wf = 0, nm = 0;
        while (fgets(line, sizeof line, sm)) {
            unsigned long a, b;
            if (sscanf(line, "%lx-%lx", &a, &b) == 2 && strchr(line, ' ') && line[strcspn(line, " ") - 1] != ':') {
                cur = a;
                if (a == (unsigned long)named && strstr(line, "[anon:understudy-test]")) nm = 1;
            }
            if (!strncmp(line, "VmFlags:", 8)) {
                if (cur == (unsigned long)adv && strstr(line, " dc")) dc = 1;
                if (cur == (unsigned long)adv + 2 * 4096 && strstr(line, " wf")) wf = 1;
            }
        }
        fclose(sm);
        if (!dc) FAIL("MADV_DONTFORK lost");
        if (!wf) FAIL("MADV_WIPEONFORK lost");
        if (named_ok && !nm) FAIL("anonymous mapping name lost");
        if (adv[0] != 1 || adv[2 * 4096] != 2 || named[0] != 'n') FAIL("madvised data");
    }
    char msg[100]; snprintf(msg, sizeof msg, "PASS %lu", iter); result(msg);
    return 0;
}
