/* Test peer (never recorded): listens on 127.0.0.1:0, prints its port, answers one client
 * with a few lines holding the time and random numbers, then exits. Bounded: 10 s. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>

int main(void) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0}; socklen_t al = sizeof a;
    a.sin_family = AF_INET; a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1)) return 1;
    getsockname(l, (struct sockaddr *)&a, &al);
    printf("%d\n", ntohs(a.sin_port)); fflush(stdout);
    alarm(10);
    int c = accept(l, 0, 0);
    char req[64]; read(c, req, sizeof req);
    srand(time(0) ^ getpid());
    for (int i = 0; i < 5; i++) {
        char line[128]; struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts);
        int n = snprintf(line, sizeof line, "line %d t=%ld.%09ld r=%d\n", i, (long)ts.tv_sec, ts.tv_nsec, rand());
        write(c, line, n); usleep(20000);
    }
    close(c);
    return 0;
}
