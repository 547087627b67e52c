/* Tries to set up io_uring through a raw syscall; the interceptor must refuse it. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void) {
    char params[120]; memset(params, 0, sizeof params);
    long r = syscall(SYS_io_uring_setup, 8, params);
    printf("io_uring_setup = %ld errno %s\n", r, r < 0 ? strerror(errno) : "-");
    return r < 0 ? 0 : 1;
}
