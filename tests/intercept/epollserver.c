/* A small epoll server on 127.0.0.1:PORT: accepts clients, answers each line with the time and a
 * random number, logs what it saw to stdout, exits after 2 clients have come and gone. Replayed,
 * it sees the same clients although nobody connects. Bounded by alarm(20). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    alarm(20);
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET; a.sin_port = htons(atoi(argv[1])); a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 8)) { perror("bind"); return 1; }
    printf("listening\n"); fflush(stdout);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    int done = 0;
    while (done < 2) {
        struct epoll_event evs[8];
        int n = epoll_wait(ep, evs, 8, 5000);
        if (n <= 0) break;
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == l) {
                struct sockaddr_in peer; socklen_t pl = sizeof peer;
                int c = accept4(l, (struct sockaddr *)&peer, &pl, SOCK_CLOEXEC);
                printf("accepted fd %d from %s\n", c, inet_ntoa(peer.sin_addr));
                struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                continue;
            }
            char buf[256]; ssize_t k = recv(fd, buf, sizeof buf - 1, 0);
            if (k <= 0) { printf("fd %d closed\n", fd); epoll_ctl(ep, EPOLL_CTL_DEL, fd, 0); close(fd); done++; continue; }
            buf[k] = 0;
            unsigned r; getrandom(&r, sizeof r, 0);
            struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts);
            char out[128]; int m = snprintf(out, sizeof out, "%ld.%09ld %u\n", (long)ts.tv_sec, ts.tv_nsec, r);
            send(fd, out, m, 0);
            printf("fd %d asked %zd bytes: answered %s", fd, k, out);
        }
    }
    printf("served %d clients\n", done);
    return 0;
}
