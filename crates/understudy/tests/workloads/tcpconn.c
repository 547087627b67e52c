/* Established TCP connections with data in flight: one to an echo server outside the tree (on
 * 127.0.0.1:PORT, run by the test), one between two processes of the tree (the root accepts on
 * its own listener, the child connects).
 * Usage: tcpconn DIR PORT (protocol as mem_single.c). Before DIR/pid: 3 messages sent to the
 * echo server whose echoes are not read yet, and 2 messages child -> root not read yet. After
 * restore: those are read and checked, then 50 more echo rounds and 20 in-tree rounds.
 * With a third argument "netlink" the root also holds a netlink socket (opened after the
 * connections, so it is met after they were put in repair mode): checkpoint must refuse it and
 * the connections must go on untouched. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/netlink.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char dir[512];
static void result(const char *msg) {
    char p[600], t[600]; snprintf(p, sizeof p, "%s/result", dir); snprintf(t, sizeof t, "%s/result.tmp", dir);
    FILE *f = fopen(t, "w"); fputs(msg, f); fclose(f); rename(t, p);
}
#define FAIL(...) do { char b_[300]; snprintf(b_, sizeof b_, "FAIL: " __VA_ARGS__); result(b_); exit(1); } while (0)
#define MSG 16

static void readn(int fd, char *b, size_t n, const char *who) {
    size_t got = 0;
    while (got < n) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 30000) != 1) FAIL("%s: no data within 30 s (%zu of %zu)", who, got, n);
        ssize_t r = read(fd, b + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) FAIL("%s: read %zd: %s", who, r, strerror(errno));
        got += (size_t)r;
    }
}
static void msg(char *b, const char *tag, int n) { snprintf(b, MSG + 1, "%s %010d\n", tag, n); }
static void wait_go(void) {
    while (access("go", F_OK) != 0) { struct timespec ts = {0, 2000000}; nanosleep(&ts, 0); }
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    snprintf(dir, sizeof dir, "%s", argv[1]);
    int port = atoi(argv[2]);
    close_range(3, ~0U, 0);
    if (chdir(dir)) return 2;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    socklen_t al = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 4) ||
        getsockname(l, (struct sockaddr *)&a, &al))
        return 3;
    pid_t child = fork();
    if (child == 0) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a)) _exit(3);
        char b[MSG + 1];
        msg(b, "CHL", 1); if (write(c, b, MSG) != MSG) _exit(3);
        msg(b, "CHL", 2); if (write(c, b, MSG) != MSG) _exit(3);
        wait_go();
        for (int n = 1; n <= 20; n++) {
            char r[MSG + 1] = {0}, want[MSG + 1];
            readn(c, r, MSG, "child");
            msg(want, "ROO", n);
            if (memcmp(r, want, MSG)) FAIL("child got '%s'", r);
            msg(b, "CHL", n + 2);
            if (write(c, b, MSG) != MSG) FAIL("child write");
        }
        _exit(0);
    }
    int in = accept(l, 0, 0);
    struct sockaddr_in e = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    e.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int out = socket(AF_INET, SOCK_STREAM, 0);
    if (in < 0 || out < 0 || connect(out, (struct sockaddr *)&e, sizeof e)) return 3;
    int one = 1;
    setsockopt(out, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char b[MSG + 1];
    for (int n = 1; n <= 3; n++) { msg(b, "ECH", n); if (write(out, b, MSG) != MSG) return 3; }
    /* wait until all 3 echoes and the child's 2 messages are queued here, then let the
     * last ACKs (delayed ACK: up to 40 ms) settle: there is no network lock yet, so a segment
     * from the outside peer arriving between the kill and the restore would be answered with
     * a reset. */
    for (int i = 0; i < 500; i++) {
        int q1 = 0, q2 = 0;
        poll(0, 0, 10);
        if (ioctl(out, FIONREAD, &q1) == 0 && ioctl(in, FIONREAD, &q2) == 0 &&
            q1 >= 3 * MSG && q2 >= 2 * MSG) break;
    }
    poll(0, 0, 150);
    if (argc > 3 && !strcmp(argv[3], "netlink") && socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE) < 0) return 3;
    FILE *pf = fopen("pid.tmp", "w"); fprintf(pf, "%d\n", getpid()); fclose(pf); rename("pid.tmp", "pid");
    wait_go();
    for (int n = 1; n <= 53; n++) {
        if (n > 3) { msg(b, "ECH", n); if (write(out, b, MSG) != MSG) FAIL("echo write %d: %s", n, strerror(errno)); }
        char r[MSG + 1] = {0}, want[MSG + 1];
        readn(out, r, MSG, "echo");
        msg(want, "ECH", n);
        if (memcmp(r, want, MSG)) FAIL("echo %d is '%s'", n, r);
    }
    for (int n = 1; n <= 20; n++) {
        char r[MSG + 1] = {0}, want[MSG + 1];
        readn(in, r, MSG, "root");
        msg(want, "CHL", n);
        if (memcmp(r, want, MSG)) FAIL("root got '%s' want '%s'", r, want);
        msg(b, "ROO", n);
        if (write(in, b, MSG) != MSG) FAIL("root write");
    }
    int st = 0;
    if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0) FAIL("child status 0x%x", st);
    close(out);
    result("PASS");
    return 0;
}
