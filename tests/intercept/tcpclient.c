/* Connects to 127.0.0.1:PORT, sends a request, prints everything the server answers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <poll.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET; a.sin_port = htons(atoi(argv[1])); a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); return 1; }
    const char *req = "HELLO\n";
    send(s, req, strlen(req), 0);
    char buf[256]; long total = 0;
    for (;;) {
        struct pollfd p = {s, POLLIN, 0};
        if (poll(&p, 1, 5000) <= 0) break;
        ssize_t n = recv(s, buf, sizeof buf, 0);
        if (n <= 0) break;
        total += n;
        printf("got %zd: %.*s", n, (int)n, buf);
        if (buf[n - 1] != '\n') printf("\n");
    }
    printf("total %ld\n", total);
    close(s);
    return 0;
}
