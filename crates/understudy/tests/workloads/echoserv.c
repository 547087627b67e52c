/* An epoll-driven, non-blocking, level-triggered TCP echo server on 127.0.0.1 (ephemeral port),
 * serving clients outside the tree (the test process).
 * Usage: echoserv DIR [WORKERS]. Writes DIR/port, then DIR/pid (the root).
 * - WORKERS = 0 (default): the root itself serves every connection from one epoll loop.
 * - WORKERS > 0 (pre-forking): the root listens, forks WORKERS workers sharing the listening
 *   socket and waits for them; each worker accepts on it from its own epoll loop and greets each
 *   connection with "W<pid, 10 digits>\n" (12 bytes) before echoing. The workers' pids are
 *   written to DIR/workers (one per line) before DIR/pid.
 * Bounded: a server loop exits after 30 s without any event, the root after its workers. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAXFD 256
#define BUF 65536

struct conn { char *buf; size_t len, off; };
static struct conn conns[MAXFD];

static void nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static void drop(int ep, int fd) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, 0);
    close(fd);
    free(conns[fd].buf);
    memset(&conns[fd], 0, sizeof conns[fd]);
}

/* Writes what is pending; returns 0 when all was written, 1 when the socket is full, -1 on error. */
static int flush(int fd) {
    struct conn *c = &conns[fd];
    while (c->off < c->len) {
        ssize_t w = write(fd, c->buf + c->off, c->len - c->off);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) return 1;
        if (w <= 0) return -1;
        c->off += (size_t)w;
    }
    c->off = c->len = 0;
    return 0;
}

static void serve(int l, int greet) {
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev)) _exit(3);
    int idle = 0;
    while (idle < 30) {
        struct epoll_event evs[64];
        int n = epoll_wait(ep, evs, 64, 1000);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) _exit(3);
        idle = n == 0 ? idle + 1 : 0;
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == l) {
                int c = accept4(l, 0, 0, SOCK_NONBLOCK);
                if (c < 0) continue; /* another worker took it */
                if (c >= MAXFD) { close(c); continue; }
                conns[c].buf = malloc(BUF);
                if (greet) {
                    conns[c].len = (size_t)snprintf(conns[c].buf, BUF, "W%010d\n", getpid());
                    if (flush(c) < 0) { close(c); free(conns[c].buf); conns[c].buf = 0; continue; }
                }
                struct epoll_event ce = {.events = conns[c].len ? EPOLLOUT : EPOLLIN, .data.fd = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                continue;
            }
            struct conn *c = &conns[fd];
            if (c->len) { /* waiting for room to write */
                int r = flush(fd);
                if (r < 0) { drop(ep, fd); continue; }
                if (r == 0) {
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = fd};
                    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ce);
                }
                continue;
            }
            ssize_t r = read(fd, c->buf, BUF);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (r <= 0) { drop(ep, fd); continue; }
            c->len = (size_t)r;
            int f = flush(fd);
            if (f < 0) { drop(ep, fd); continue; }
            if (f == 1) {
                struct epoll_event ce = {.events = EPOLLOUT, .data.fd = fd};
                epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ce);
            }
        }
    }
}

static void put(const char *name, const char *text) {
    char t[64]; snprintf(t, sizeof t, "%s.tmp", name);
    FILE *f = fopen(t, "w"); if (!f) _exit(2);
    fputs(text, f); fclose(f); rename(t, name);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int workers = argc > 2 ? atoi(argv[2]) : 0;
    if (workers < 0 || workers > 16) return 2;
    close_range(3, ~0U, 0);
    if (chdir(argv[1])) return 2;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 128) ||
        getsockname(l, (struct sockaddr *)&a, &al))
        return 3;
    nonblock(l);
    char b[256];
    snprintf(b, sizeof b, "%d\n", ntohs(a.sin_port));
    put("port", b);
    if (workers == 0) {
        snprintf(b, sizeof b, "%d\n", getpid());
        put("pid", b);
        serve(l, 0);
        return 0;
    }
    size_t off = 0;
    for (int i = 0; i < workers; i++) {
        pid_t p = fork();
        if (p < 0) return 3;
        if (p == 0) { serve(l, 1); _exit(0); }
        off += (size_t)snprintf(b + off, sizeof b - off, "%d\n", p);
    }
    put("workers", b);
    snprintf(b, sizeof b, "%d\n", getpid());
    put("pid", b);
    while (wait(0) > 0 || errno == EINTR) {}
    return 0;
}
