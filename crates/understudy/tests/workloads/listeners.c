/* Listening and bound sockets: a unix stream listener on DIR/ul.sock (mode 0640) with an
 * accepted connection holding unread bytes, an abstract unix seqpacket listener, a TCP listener
 * on 127.0.0.1 (ephemeral port) and two UDP sockets on 127.0.0.1, one connected to the other.
 * Usage: listeners DIR (protocol as mem_single.c). After restore: same addresses, new
 * connections accepted on every listener, the unread bytes still there, the UDP pair works. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static char dir[512];
static void result(const char *msg) {
    char p[600], t[600]; snprintf(p, sizeof p, "%s/result", dir); snprintf(t, sizeof t, "%s/result.tmp", dir);
    FILE *f = fopen(t, "w"); fputs(msg, f); fclose(f); rename(t, p);
}
#define FAIL(...) do { char b_[300]; snprintf(b_, sizeof b_, "FAIL: " __VA_ARGS__); result(b_); exit(1); } while (0)

static socklen_t unix_addr(struct sockaddr_un *a, const char *name) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    if (name[0] == '@') {
        strncpy(a->sun_path + 1, name + 1, sizeof a->sun_path - 2);
        return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name + 1));
    }
    strncpy(a->sun_path, name, sizeof a->sun_path - 1);
    return (socklen_t)sizeof *a;
}
static int unix_listen(int type, const char *name) {
    struct sockaddr_un a; socklen_t l = unix_addr(&a, name);
    int s = socket(AF_UNIX, type, 0);
    if (s < 0 || bind(s, (struct sockaddr *)&a, l) || listen(s, 7)) return -1;
    return s;
}
static int unix_connect(int type, const char *name) {
    struct sockaddr_un a; socklen_t l = unix_addr(&a, name);
    int s = socket(AF_UNIX, type, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&a, l)) return -1;
    return s;
}
static int inet_sock(int type) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int s = socket(AF_INET, type, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a)) return -1;
    return s;
}
static int port_of(int s) {
    struct sockaddr_in a; socklen_t l = sizeof a;
    if (getsockname(s, (struct sockaddr *)&a, &l)) return -1;
    return ntohs(a.sin_port);
}

int main(int argc, char **argv) {
    (void)argc; snprintf(dir, sizeof dir, "%s", argv[1]);
    close_range(3, ~0U, 0);
    if (chdir(dir)) return 2;
    char abs_name[64]; snprintf(abs_name, sizeof abs_name, "@understudy-listeners-%d", getpid());
    int ul = unix_listen(SOCK_STREAM, "ul.sock");
    if (ul < 0 || chmod("ul.sock", 0640)) return 3;
    int al = unix_listen(SOCK_SEQPACKET, abs_name);
    int c1 = unix_connect(SOCK_STREAM, "ul.sock");
    int a1 = accept(ul, 0, 0);
    if (al < 0 || c1 < 0 || a1 < 0 || write(c1, "hello", 5) != 5) return 3;
    int tl = inet_sock(SOCK_STREAM);
    if (tl < 0 || listen(tl, 16)) return 3;
    int tport = port_of(tl);
    int u1 = inet_sock(SOCK_DGRAM), u2 = inet_sock(SOCK_DGRAM);
    if (u1 < 0 || u2 < 0) return 3;
    struct sockaddr_in ua = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port_of(u2))};
    ua.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(u1, (struct sockaddr *)&ua, sizeof ua)) return 3;
    FILE *pf = fopen("pid.tmp", "w"); fprintf(pf, "%d\n", getpid()); fclose(pf); rename("pid.tmp", "pid");
    while (access("go", F_OK) != 0) { struct timespec ts = {0, 2000000}; nanosleep(&ts, 0); }

    char b[16] = {0};
    if (read(a1, b, 5) != 5 || memcmp(b, "hello", 5)) FAIL("accepted connection lost its bytes ('%s')", b);
    if (write(a1, "back", 4) != 4 || read(c1, b, 4) != 4 || memcmp(b, "back", 4)) FAIL("accepted connection reply");
    struct stat st;
    if (stat("ul.sock", &st) || !S_ISSOCK(st.st_mode) || (st.st_mode & 0777) != 0640) FAIL("ul.sock mode %o", st.st_mode);
    int c2 = unix_connect(SOCK_STREAM, "ul.sock");
    int a2 = c2 < 0 ? -1 : accept(ul, 0, 0);
    if (a2 < 0 || write(c2, "x", 1) != 1 || read(a2, b, 1) != 1) FAIL("unix listener after restore: %s", strerror(errno));
    int c3 = unix_connect(SOCK_SEQPACKET, abs_name);
    int a3 = c3 < 0 ? -1 : accept(al, 0, 0);
    if (a3 < 0 || send(c3, "rec", 3, 0) != 3 || recv(a3, b, sizeof b, 0) != 3) FAIL("abstract listener after restore: %s", strerror(errno));
    if (port_of(tl) != tport) FAIL("tcp listener port %d, was %d", port_of(tl), tport);
    struct sockaddr_in ta = {.sin_family = AF_INET, .sin_port = htons((unsigned short)tport)};
    ta.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int tc = socket(AF_INET, SOCK_STREAM, 0);
    if (tc < 0 || connect(tc, (struct sockaddr *)&ta, sizeof ta)) FAIL("tcp connect: %s", strerror(errno));
    int ta1 = accept(tl, 0, 0);
    if (ta1 < 0 || write(tc, "tcp", 3) != 3 || read(ta1, b, 3) != 3 || memcmp(b, "tcp", 3)) FAIL("tcp accept/exchange");
    if (send(u1, "udp", 3, 0) != 3 || recv(u2, b, sizeof b, 0) != 3 || memcmp(b, "udp", 3)) FAIL("udp pair: %s", strerror(errno));
    result("PASS");
    return 0;
}
