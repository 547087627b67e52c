/* A FIFO with bytes queued, an interval timer driving a SIGALRM handler, an alternate signal
 * stack, a lowered rlimit and thread name. Usage: misc DIR (protocol as mem_single.c). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static char dir[512];
static volatile sig_atomic_t ticks;
static void on_alrm(int s) { (void)s; ticks++; }
static void result(const char *msg) {
    char p[600], t[600]; snprintf(p, sizeof p, "%s/result", dir); snprintf(t, sizeof t, "%s/result.tmp", dir);
    FILE *f = fopen(t, "w"); fputs(msg, f); fclose(f); rename(t, p);
}
#define FAIL(...) do { char b[300]; snprintf(b, sizeof b, "FAIL: " __VA_ARGS__); result(b); exit(1); } while (0)

int main(int argc, char **argv) {
    (void)argc; snprintf(dir, sizeof dir, "%s", argv[1]);
    close_range(3, ~0U, 0);
    chdir(dir);
    mkfifo("fifo", 0600);
    int rd = open("fifo", O_RDONLY | O_NONBLOCK);
    int wr = open("fifo", O_WRONLY);
    char buf[3000]; for (int i = 0; i < 3000; i++) buf[i] = (char)(i % 251);
    write(wr, buf, sizeof buf);
    static char altstack[65536];
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0}; sigaltstack(&ss, 0);
    struct sigaction sa; memset(&sa, 0, sizeof sa); sa.sa_handler = on_alrm; sa.sa_flags = SA_RESTART | SA_ONSTACK;
    sigaction(SIGALRM, &sa, 0);
    struct itimerval it = {{0, 10000}, {0, 10000}}; setitimer(ITIMER_REAL, &it, 0);
    struct rlimit rl = {512, 1024}; setrlimit(RLIMIT_NOFILE, &rl);
    prctl(PR_SET_NAME, "misc-main");
    FILE *pf = fopen("pid.tmp", "w"); fprintf(pf, "%d\n", getpid()); fclose(pf); rename("pid.tmp", "pid");
    while (access("go", F_OK) != 0) { struct timespec ts = {0, 2000000}; nanosleep(&ts, 0); }
    /* 3 ticks of the 10 ms timer, waited for (at least 20 s in all): a loaded machine merges
     * expirations into one pending SIGALRM, so a fixed 100 ms may see fewer. */
    int t0 = ticks;
    for (int i = 0; i < 2000 && ticks - t0 < 3; i++) { struct timespec ts = {0, 10000000}; nanosleep(&ts, 0); }
    if (ticks - t0 < 3) FAIL("itimer not running (%d ticks)", ticks - t0);
    char got[3000]; ssize_t n = read(rd, got, sizeof got);
    if (n != 3000 || memcmp(got, buf, 3000)) FAIL("fifo data (%zd bytes)", n);
    if (write(wr, "z", 1) != 1 || read(rd, got, 1) != 1 || got[0] != 'z') FAIL("fifo no longer connected");
    stack_t cur; sigaltstack(0, &cur);
    if (cur.ss_sp != altstack || cur.ss_size != sizeof altstack) FAIL("sigaltstack");
    getrlimit(RLIMIT_NOFILE, &rl); if (rl.rlim_cur != 512 || rl.rlim_max != 1024) FAIL("rlimit %lu/%lu", (unsigned long)rl.rlim_cur, (unsigned long)rl.rlim_max);
    char name[32] = ""; prctl(PR_GET_NAME, name); if (strcmp(name, "misc-main")) FAIL("name %s", name);
    int fl = fcntl(rd, F_GETFL); if (!(fl & O_NONBLOCK)) FAIL("fifo read end lost O_NONBLOCK");
    result("PASS");
    return 0;
}
