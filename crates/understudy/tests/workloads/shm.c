/* Shared anonymous memory and a memfd written by a parent and 2 children; after restore the
 * memory must still be shared (writes of one visible to the others), and the memfd fd must
 * show the same data as the mappings. Usage: shm DIR (protocol as mem_single.c). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char dir[512];
static void result(const char *msg) {
    char p[600], t[600]; snprintf(p, sizeof p, "%s/result", dir); snprintf(t, sizeof t, "%s/result.tmp", dir);
    FILE *f = fopen(t, "w"); fputs(msg, f); fclose(f); rename(t, p);
}
#define FAIL(...) do { char b[300]; snprintf(b, sizeof b, "FAIL: " __VA_ARGS__); result(b); exit(1); } while (0)
#define L (1 << 20)

int main(int argc, char **argv) {
    (void)argc; snprintf(dir, sizeof dir, "%s", argv[1]);
    close_range(3, ~0U, 0);
    chdir(dir);
    int mfd = memfd_create("testmemfd", 0);
    ftruncate(mfd, L);
    volatile char *mm = mmap(0, L, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    volatile char *an = mmap(0, L, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int go[3][2]; pid_t kids[3];
    for (int i = 1; i <= 2; i++) {
        pipe(go[i]);
        pid_t p = fork();
        if (p == 0) {
            mm[i * 8192] = 'A' + i; an[i * 8192] = 'a' + i; /* before the checkpoint */
            char c; if (read(go[i][0], &c, 1) != 1) _exit(2);
            if (mm[0] != 'P' || an[0] != 'p') _exit(3); /* parent's write after restore */
            mm[i * 8192 + 1] = 'X'; an[i * 8192 + 1] = 'x';
            _exit(0);
        }
        kids[i] = p;
    }
    /* Ready only once both children made their early writes (a fixed pause may not be enough
     * for them to be scheduled on a loaded machine; the check after restore needs them). */
    for (int i = 1; i <= 2; i++)
        while (mm[i * 8192] != 'A' + i || an[i * 8192] != 'a' + i) { struct timespec ts = {0, 1000000}; nanosleep(&ts, 0); }
    FILE *pf = fopen("pid.tmp", "w"); fprintf(pf, "%d\n", getpid()); fclose(pf); rename("pid.tmp", "pid");
    while (access("go", F_OK) != 0) { struct timespec ts = {0, 2000000}; nanosleep(&ts, 0); }
    for (int i = 1; i <= 2; i++) if (mm[i * 8192] != 'A' + i || an[i * 8192] != 'a' + i) FAIL("child %d's early write lost", i);
    mm[0] = 'P'; an[0] = 'p';
    for (int i = 1; i <= 2; i++) write(go[i][1], "g", 1);
    for (int i = 1; i <= 2; i++) {
        int st; waitpid(kids[i], &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st)) FAIL("child %d status %#x", i, st);
        if (mm[i * 8192 + 1] != 'X' || an[i * 8192 + 1] != 'x') FAIL("child %d's late write not shared", i);
    }
    char c = 0; pread(mfd, &c, 1, 8192 + 1);
    if (c != 'X') FAIL("memfd fd and mapping differ");
    result("PASS");
    return 0;
}
