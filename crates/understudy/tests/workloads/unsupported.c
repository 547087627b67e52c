/* Holds a resource the engine refuses (a socket, or an io_uring instance with argument
 * "uring") while counting; checkpoint must fail and leave it running untouched.
 * Usage: unsupported DIR [uring]. Writes DIR/fd with the fd number of the resource. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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
    } else {
        fd = socket(AF_INET, SOCK_DGRAM, 0);
    }
    FILE *f = fopen("fd", "w"); fprintf(f, "%d\n", fd); fclose(f);
    unsigned long n = 0;
    FILE *pf = fopen("pid.tmp", "w"); fprintf(pf, "%d\n", getpid()); fclose(pf); rename("pid.tmp", "pid");
    while (access("go", F_OK) != 0) { n++; struct timespec ts = {0, 1000000}; nanosleep(&ts, 0); }
    FILE *r = fopen("result.tmp", "w"); fprintf(r, "%s %lu", fd >= 0 ? "PASS" : "FAIL: no fd", n); fclose(r); rename("result.tmp", "result");
    return 0;
}
