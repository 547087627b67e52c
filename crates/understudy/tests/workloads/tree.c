/* A parent with 3 children (one with a grandchild), connected by pipes with data in flight,
 * a shared O_APPEND log and a shared file offset; child 2 has its own process group, child 3
 * its own session; child 1 is blocked in waitpid, the others in read().
 * Usage: tree DIR (protocol as mem_single.c). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char dir[512];
static void result(const char *msg) {
    char p[600], t[600]; snprintf(p, sizeof p, "%s/result", dir); snprintf(t, sizeof t, "%s/result.tmp", dir);
    FILE *f = fopen(t, "w"); fputs(msg, f); fclose(f); rename(t, p);
}
#define FAIL(...) do { char b[300]; snprintf(b, sizeof b, "FAIL: " __VA_ARGS__); result(b); exit(1); } while (0)

static int data[4][2], go[4][2], logfd, shfd;
static pid_t parent;

/* child body: wait for go, then read the in-flight data and check identity */
static int child(int i, pid_t want_pgid, pid_t want_sid, pid_t want_ppid) {
    char c;
    if (read(go[i][0], &c, 1) != 1 || c != 'g') return 10;
    char buf[5000]; char want[5000];
    for (int k = 0; k < 4000; k++) want[k] = (char)('a' + (k + i) % 26);
    size_t got = 0; while (got < 4000) { ssize_t n = read(data[i][0], buf + got, 4000 - got); if (n <= 0) return 11; got += n; }
    if (memcmp(buf, want, 4000)) return 12;
    if (getpgid(0) != want_pgid) return 13;
    if (getsid(0) != want_sid) return 14;
    if (getppid() != want_ppid) return 15;
    char line[64]; int n = snprintf(line, sizeof line, "child %d\n", i);
    write(logfd, line, n);
    write(shfd, "0123456789", 10);
    return 0;
}

int main(int argc, char **argv) {
    (void)argc; snprintf(dir, sizeof dir, "%s", argv[1]);
    close_range(3, ~0U, 0);
    chdir(dir);
    parent = getpid();
    logfd = open("log", O_WRONLY | O_CREAT | O_APPEND | O_TRUNC, 0644);
    shfd = open("shared", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    write(logfd, "start\n", 6);
    for (int i = 1; i <= 3; i++) { pipe(data[i]); pipe(go[i]); }
    pid_t kids[4] = {0};
    for (int i = 1; i <= 3; i++) {
        pid_t p = fork();
        if (p == 0) {
            if (i == 1) {
                pid_t g = fork();
                if (g == 0) _exit(child(1, getpgid(0), getsid(0), getppid()));
                int st; if (waitpid(g, &st, 0) != g) _exit(20);
                _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 21);
            }
            if (i == 2) { setpgid(0, 0); _exit(child(2, getpid(), getsid(0), parent)); }
            setsid(); _exit(child(3, getpid(), getpid(), parent));
        }
        kids[i] = p;
    }
    /* data in flight: written now, read only after restore */
    for (int i = 1; i <= 3; i++) {
        char buf[4000]; for (int k = 0; k < 4000; k++) buf[k] = (char)('a' + (k + i) % 26);
        write(data[i][1], buf, 4000);
    }
    usleep(100000);
    FILE *pf = fopen("pid.tmp", "w"); fprintf(pf, "%d\n", getpid()); fclose(pf); rename("pid.tmp", "pid");
    while (access("go", F_OK) != 0) { struct timespec ts = {0, 2000000}; nanosleep(&ts, 0); }
    for (int i = 1; i <= 3; i++) write(go[i][1], "g", 1);
    for (int i = 1; i <= 3; i++) {
        int st; if (waitpid(kids[i], &st, 0) != kids[i]) FAIL("waitpid child %d", i);
        if (!WIFEXITED(st) || WEXITSTATUS(st)) FAIL("child %d status %#x", i, st);
    }
    off_t off = lseek(shfd, 0, SEEK_CUR);
    if (off != 30) FAIL("shared offset %ld", (long)off);
    char lb[200] = ""; int lf = open("log", O_RDONLY); int n = read(lf, lb, sizeof lb - 1); lb[n > 0 ? n : 0] = 0;
    if (strncmp(lb, "start\n", 6) || strlen(lb) != 6 + 3 * 8) FAIL("log '%s'", lb);
    result("PASS");
    return 0;
}
