/* A request/response pair of processes over unix socketpairs, with messages in flight.
 * Usage: unixpair DIR (protocol as mem_single.c).
 * The client (root) sends numbered requests on a stream pair and reads the answers; the server
 * (child) answers each with its number doubled. Before DIR/pid is written, messages are left
 * queued on purpose: 3 datagrams and 2 seqpacket records client -> server, 2 datagrams
 * server -> client, and a stream request the server answers only after the checkpoint. After
 * restore both sides check every queued message (contents and boundaries) and 50 more rounds. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char dir[512];
static void result(const char *msg) {
    char p[600], t[600]; snprintf(p, sizeof p, "%s/result", dir); snprintf(t, sizeof t, "%s/result.tmp", dir);
    FILE *f = fopen(t, "w"); fputs(msg, f); fclose(f); rename(t, p);
}
#define FAIL(...) do { char b[300]; snprintf(b, sizeof b, "FAIL: " __VA_ARGS__); result(b); exit(1); } while (0)
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
static void expect_msg(int fd, const char *want, const char *who) {
    char got[64] = {0};
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 5000) != 1) FAIL("%s: nothing queued", who);
    ssize_t r = recv(fd, got, sizeof got - 1, MSG_DONTWAIT);
    if (r != (ssize_t)strlen(want) || memcmp(got, want, (size_t)r)) FAIL("%s: got %zd '%.60s', want '%.60s'", who, r, got, want);
}
static void sendmsg_s(int fd, const char *m) {
    if (send(fd, m, strlen(m), 0) != (ssize_t)strlen(m)) FAIL("send %s: %s", m, strerror(errno));
}

static void server(int s, int q, int d) {
    /* The first request waits in the stream until the checkpoint is over. */
    while (access("go", F_OK) != 0) { struct timespec ts = {0, 2000000}; nanosleep(&ts, 0); }
    expect_msg(d, "dgram-1", "server dgram 1");
    expect_msg(d, "dgram-22", "server dgram 2");
    expect_msg(d, "dgram-333", "server dgram 3");
    expect_msg(q, "seq-A", "server seqpacket 1");
    expect_msg(q, "seq-BB", "server seqpacket 2");
    for (;;) {
        char b[MSG + 1] = {0};
        readn(s, b, MSG, "server");
        if (!memcmp(b, "QUIT", 4)) _exit(0);
        long n = strtol(b + 4, 0, 10);
        char r[MSG + 1]; snprintf(r, sizeof r, "RSP %011ld", n * 2);
        if (write(s, r, MSG) != MSG) FAIL("server write");
    }
}

int main(int argc, char **argv) {
    (void)argc; snprintf(dir, sizeof dir, "%s", argv[1]);
    close_range(3, ~0U, 0);
    if (chdir(dir)) return 2;
    int s[2], q[2], d[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, s) || socketpair(AF_UNIX, SOCK_SEQPACKET, 0, q) ||
        socketpair(AF_UNIX, SOCK_DGRAM, 0, d))
        return 3;
    pid_t child = fork();
    if (child == 0) {
        close(s[0]); close(q[0]); close(d[0]);
        sendmsg_s(d[1], "back-1");
        sendmsg_s(d[1], "back-22");
        server(s[1], q[1], d[1]);
    }
    close(s[1]); close(q[1]); close(d[1]);
    sendmsg_s(d[0], "dgram-1");
    sendmsg_s(d[0], "dgram-22");
    sendmsg_s(d[0], "dgram-333");
    sendmsg_s(q[0], "seq-A");
    sendmsg_s(q[0], "seq-BB");
    char req[MSG + 1];
    snprintf(req, sizeof req, "REQ %011d", 1);
    if (write(s[0], req, MSG) != MSG) return 3;
    /* wait until the server's datagrams are queued here */
    for (int i = 0; i < 500; i++) {
        struct pollfd p = {d[0], POLLIN, 0};
        if (poll(&p, 1, 10) == 1) break;
    }
    FILE *pf = fopen("pid.tmp", "w"); fprintf(pf, "%d\n", getpid()); fclose(pf); rename("pid.tmp", "pid");
    while (access("go", F_OK) != 0) { struct timespec ts = {0, 2000000}; nanosleep(&ts, 0); }
    expect_msg(d[0], "back-1", "client dgram 1");
    expect_msg(d[0], "back-22", "client dgram 2");
    for (int n = 1; n <= 51; n++) {
        if (n > 1) {
            snprintf(req, sizeof req, "REQ %011d", n);
            if (write(s[0], req, MSG) != MSG) FAIL("client write");
        }
        char r[MSG + 1] = {0};
        readn(s[0], r, MSG, "client");
        char want[MSG + 1]; snprintf(want, sizeof want, "RSP %011d", n * 2);
        if (memcmp(r, want, MSG)) FAIL("answer %d is '%s'", n, r);
    }
    if (write(s[0], "QUIT            ", MSG) != MSG) FAIL("quit");
    int st = 0;
    if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0) FAIL("server status 0x%x", st);
    result("PASS");
    return 0;
}
