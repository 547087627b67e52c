/* Holds a resource the engine refuses (a socket, or an io_uring instance with argument
 * "uring", or with "closewait" a TCP socket in state CLOSE_WAIT; the socket is a netlink socket) while counting; checkpoint must fail and leave it running untouched.
 * Usage: unsupported DIR [uring]. Writes DIR/fd with the fd number of the resource. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    close_range(3, ~0U, 0);
    chdir(argv[1]);
    int fd;
    if (argc > 2 && !strcmp(argv[2], "uring")) {
        unsigned char params[120]; memset(params, 0, sizeof params);
        fd = syscall(425 /* io_uring_setup */, 4, params);
    } else if (argc > 2 && !strcmp(argv[2], "closewait")) {
        /* A loopback connection whose other end is closed: this end received the FIN. */
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t al = sizeof a;
        int l = socket(AF_INET, SOCK_STREAM, 0);
        if (l < 0 || bind(l, (void *)&a, sizeof a) || listen(l, 1) || getsockname(l, (void *)&a, &al)) return 3;
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (void *)&a, sizeof a)) return 3;
        int s = accept(l, 0, 0);
        close(s);
        close(l);
        /* CLOSE_WAIT once the FIN was processed: wait for it (POLLRDHUP), not for a fixed
         * 50 ms (loopback delivery may be deferred to ksoftirqd on a loaded machine). */
        struct pollfd p = {fd, POLLRDHUP, 0};
        if (poll(&p, 1, 30000) != 1 || !(p.revents & POLLRDHUP)) return 3;
    } else {
        fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    }
    FILE *f = fopen("fd", "w"); fprintf(f, "%d\n", fd); fclose(f);
    unsigned long n = 0;
    FILE *pf = fopen("pid.tmp", "w"); fprintf(pf, "%d\n", getpid()); fclose(pf); rename("pid.tmp", "pid");
    while (access("go", F_OK) != 0) { n++; struct timespec ts = {0, 1000000}; nanosleep(&ts, 0); }
    FILE *r = fopen("result.tmp", "w"); fprintf(r, "%s %lu", fd >= 0 ? "PASS" : "FAIL: no fd", n); fclose(r); rename("result.tmp", "result");
    return 0;
}
