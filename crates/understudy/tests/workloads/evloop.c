/* eventfd, timerfd and signalfd in one epoll loop, with a child sharing the eventfd.
 * Usage: evloop DIR (protocol as mem_single.c: DIR/pid when ready, DIR/go to check,
 * DIR/result gets PASS or FAIL: why).
 * Checked after restore: the loop keeps getting timer ticks, eventfd increments (also from the
 * child, through the shared open file description) and SIGUSR1 through the signalfd; an
 * untouched eventfd kept its counter, a semaphore eventfd its mode and counter, a one-hour
 * timerfd its remaining time and 7 s interval, and epoll_ctl(MOD/DEL) by the original fd numbers
 * works (the registrations are keyed by the same numbers). */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char dir[512];
static void result(const char *msg) {
    char p[600], t[600]; snprintf(p, sizeof p, "%s/result", dir); snprintf(t, sizeof t, "%s/result.tmp", dir);
    FILE *f = fopen(t, "w"); fputs(msg, f); fclose(f); rename(t, p);
}
#define FAIL(...) do { char b[300]; snprintf(b, sizeof b, "FAIL: " __VA_ARGS__); result(b); exit(1); } while (0)

static int ep, efd, tfd, sfd, kept, sem, slow;
static uint64_t ticks, evsum, sigs, spurious;

/* Runs the loop for `ms` milliseconds. */
static void loop(int ms) {
    struct timespec t0, now; clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long el = (now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
        if (el >= ms) return;
        struct epoll_event evs[8];
        int n = epoll_wait(ep, evs, 8, 20);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) FAIL("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++) {
            uint64_t v;
            switch (evs[i].data.u64) {
            case 1:
                if (read(efd, &v, 8) == 8) evsum += v;
                break;
            case 2:
                if (read(tfd, &v, 8) == 8) {
                    /* one signal per 5 ticks: v > 1 when the loop was late (a loaded
                     * machine), so count crossings of a multiple of 5, not landings on one */
                    if ((ticks + v) / 5 != ticks / 5) raise(SIGUSR1);
                    ticks += v;
                    uint64_t one = 1;
                    if (write(efd, &one, 8) != 8) FAIL("eventfd write");
                }
                break;
            case 3: {
                struct signalfd_siginfo si;
                if (read(sfd, &si, sizeof si) == sizeof si) {
                    if (si.ssi_signo != SIGUSR1) FAIL("signalfd gave signal %u", si.ssi_signo);
                    sigs++;
                }
                break;
            }
            case 4:
                /* kept is edge-triggered and its edge was consumed before the checkpoint;
                 * a restore re-registers it while readable, which reports the edge once more
                 * (a spurious wake-up, documented): at most once per restore. */
                if (++spurious > 2) FAIL("kept reported %llu times", (unsigned long long)spurious);
                break;
            default:
                FAIL("unexpected epoll data %llu", (unsigned long long)evs[i].data.u64);
            }
        }
    }
}

int main(int argc, char **argv) {
    (void)argc; snprintf(dir, sizeof dir, "%s", argv[1]);
    close_range(3, ~0U, 0);
    if (chdir(dir)) return 2;
    sigset_t m; sigemptyset(&m); sigaddset(&m, SIGUSR1);
    sigprocmask(SIG_BLOCK, &m, 0);
    ep = epoll_create1(EPOLL_CLOEXEC);
    efd = eventfd(0, EFD_NONBLOCK);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    sfd = signalfd(-1, &m, SFD_NONBLOCK | SFD_CLOEXEC);
    kept = eventfd(0, 0);
    sem = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
    slow = timerfd_create(CLOCK_MONOTONIC, 0);
    if (ep < 0 || efd < 0 || tfd < 0 || sfd < 0 || kept < 0 || sem < 0 || slow < 0) return 3;
    uint64_t big = 0x123456789aULL; /* more than eventfd()'s 32-bit initial value */
    if (write(kept, &big, 8) != 8) return 3;
    struct itimerspec its = {{0, 5000000}, {0, 5000000}};
    if (timerfd_settime(tfd, 0, &its, 0)) return 3;
    struct itimerspec hour = {{7, 0}, {3600, 0}};
    if (timerfd_settime(slow, 0, &hour, 0)) return 3;
    struct epoll_event e1 = {EPOLLIN, {.u64 = 1}}, e2 = {EPOLLIN, {.u64 = 2}}, e3 = {EPOLLIN, {.u64 = 3}},
                       e4 = {EPOLLIN | EPOLLET, {.u64 = 4}};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, efd, &e1) || epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &e2) ||
        epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &e3) || epoll_ctl(ep, EPOLL_CTL_ADD, kept, &e4))
        return 3;
    /* kept is registered edge-triggered; its edge is consumed here, and it is deleted from the
     * set after restore by its fd number. */
    struct epoll_event drop[8];
    epoll_wait(ep, drop, 8, 0); /* consumes kept's edge (data 4) */
    pid_t child = fork();
    if (child == 0) {
        while (access("go2", F_OK) != 0) { struct timespec ts = {0, 2000000}; nanosleep(&ts, 0); }
        uint64_t v = 1000000;
        _exit(write(efd, &v, 8) == 8 ? 0 : 1);
    }
    loop(100);
    FILE *pf = fopen("pid.tmp", "w"); fprintf(pf, "%d\n", getpid()); fclose(pf); rename("pid.tmp", "pid");
    while (access("go", F_OK) != 0) loop(10);
    if (epoll_ctl(ep, EPOLL_CTL_DEL, kept, 0)) FAIL("epoll_ctl(DEL) of kept by its fd number: %s", strerror(errno));
    struct epoll_event e2b = {EPOLLIN, {.u64 = 2}};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, tfd, &e2b)) FAIL("epoll_ctl(MOD) of the timerfd: %s", strerror(errno));
    uint64_t t0 = ticks, s0 = sigs, ev0 = evsum;
    FILE *g = fopen("go2", "w"); fclose(g); /* now the child writes to the shared eventfd */
    loop(300);
    int st = 0;
    if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0) FAIL("child status 0x%x", st);
    /* Run the loop until it has seen what is checked below, or 20 s: a fixed time may pass
     * without the process being scheduled at all on a loaded machine. */
    for (int i = 0; i < 400; i++) {
        loop(50);
        if (ticks - t0 >= 10 && sigs - s0 >= 2 && evsum - ev0 >= 1000000 + 10) break;
    }
    if (ticks - t0 < 10) FAIL("only %llu timer ticks after restore", (unsigned long long)(ticks - t0));
    if (sigs - s0 < 2) FAIL("only %llu signals through the signalfd", (unsigned long long)(sigs - s0));
    if (evsum - ev0 < 1000000 + 10) FAIL("eventfd sum grew by %llu (child's write lost?)", (unsigned long long)(evsum - ev0));
    uint64_t v = 0;
    if (read(kept, &v, 8) != 8 || v != big) FAIL("kept eventfd counter %#llx", (unsigned long long)v);
    for (int i = 0; i < 3; i++)
        if (read(sem, &v, 8) != 8 || v != 1) FAIL("semaphore read %d gave %llu", i, (unsigned long long)v);
    if (read(sem, &v, 8) != -1 || errno != EAGAIN) FAIL("semaphore eventfd not empty after 3 reads");
    struct itimerspec cur;
    if (timerfd_gettime(slow, &cur)) FAIL("timerfd_gettime");
    if (cur.it_interval.tv_sec != 7 || cur.it_interval.tv_nsec != 0) FAIL("slow timer interval %lds", (long)cur.it_interval.tv_sec);
    if (cur.it_value.tv_sec < 3000 || cur.it_value.tv_sec > 3600) FAIL("slow timer remaining %lds", (long)cur.it_value.tv_sec);
    char msg[200];
    snprintf(msg, sizeof msg, "PASS ticks %llu signals %llu", (unsigned long long)ticks, (unsigned long long)sigs);
    result(msg);
    return 0;
}
