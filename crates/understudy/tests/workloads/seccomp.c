/* Two seccomp filters (an errno filter on getppid, a RET_TRAP filter on uname with a SIGSYS
 * handler, as the interceptor installs), no_new_privs, and a thread that inherited them.
 * Usage: seccomp DIR (protocol as mem_single.c). */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

static char dir[512];
static volatile sig_atomic_t trapped;
static void on_sys(int s) { (void)s; trapped++; }
static void result(const char *msg) {
    char p[600], t[600]; snprintf(p, sizeof p, "%s/result", dir); snprintf(t, sizeof t, "%s/result.tmp", dir);
    FILE *f = fopen(t, "w"); fputs(msg, f); fclose(f); rename(t, p);
}
#define FAIL(...) do { char b[300]; snprintf(b, sizeof b, "FAIL: " __VA_ARGS__); result(b); exit(1); } while (0)

static void install(int nr, unsigned ret) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, ret),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog p = {4, f};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &p)) exit(3);
}
static volatile int thread_errno;
static void *worker(void *a) {
    (void)a;
    while (access("go", F_OK) != 0) { struct timespec ts = {0, 2000000}; nanosleep(&ts, 0); }
    errno = 0; long r = syscall(SYS_getppid); thread_errno = (r == -1) ? errno : -1;
    return 0;
}

int main(int argc, char **argv) {
    (void)argc; snprintf(dir, sizeof dir, "%s", argv[1]);
    close_range(3, ~0U, 0);
    chdir(dir);
    signal(SIGSYS, on_sys);
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    install(SYS_getppid, SECCOMP_RET_ERRNO | 77);
    install(SYS_uname, SECCOMP_RET_TRAP);
    pthread_t t; pthread_create(&t, 0, worker, 0);
    FILE *pf = fopen("pid.tmp", "w"); fprintf(pf, "%d\n", getpid()); fclose(pf); rename("pid.tmp", "pid");
    while (access("go", F_OK) != 0) { struct timespec ts = {0, 2000000}; nanosleep(&ts, 0); }
    pthread_join(t, 0);
    errno = 0; long r = syscall(SYS_getppid);
    if (r != -1 || errno != 77) FAIL("getppid filter lost: %ld errno %d", r, errno);
    if (thread_errno != 77) FAIL("thread's filter lost: %d", thread_errno);
    struct utsname u; syscall(SYS_uname, &u);
    if (trapped != 1) FAIL("uname trap filter lost (%d)", (int)trapped);
    if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1) FAIL("no_new_privs lost");
    result("PASS");
    return 0;
}
