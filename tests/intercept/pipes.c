/* A parent and 3 children exchange data over pipes; the children's answers depend on time and
 * randomness; the parent waits for each and prints what it got and their exit statuses. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/random.h>
#include <sys/wait.h>

int main(void) {
    int up[3][2], down[3][2]; pid_t pid[3];
    for (int i = 0; i < 3; i++) {
        pipe(up[i]); pipe(down[i]);
        pid[i] = fork();
        if (pid[i] == 0) {
            close(up[i][0]); close(down[i][1]);
            char q[64]; ssize_t n = read(down[i][0], q, sizeof q - 1); q[n > 0 ? n : 0] = 0;
            unsigned r; getrandom(&r, sizeof r, 0);
            struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
            char a[128]; int k = snprintf(a, sizeof a, "child %d pid %d got '%s' r=%u t=%ld", i, getpid(), q, r, ts.tv_nsec);
            write(up[i][1], a, k);
            _exit(10 + i);
        }
        close(up[i][1]); close(down[i][0]);
    }
    for (int i = 2; i >= 0; i--) {
        char q[32]; int k = snprintf(q, sizeof q, "job-%d", i * 7);
        write(down[i][1], q, k); close(down[i][1]);
    }
    for (int i = 0; i < 3; i++) {
        char a[256]; ssize_t n = read(up[i][0], a, sizeof a - 1); a[n > 0 ? n : 0] = 0;
        int st; pid_t w = waitpid(pid[i], &st, 0);
        printf("parent %d: from %d (%s) status %d: %s\n", getpid(), w, w == pid[i] ? "same" : "other", WEXITSTATUS(st), a);
    }
    return 0;
}
