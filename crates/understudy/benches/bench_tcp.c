/* Workload of tcp_bench: holds N established TCP connections to a peer outside the tree.
 * Usage: bench_tcp DIR N. Prints the pid of the (daemonized) workload on stdout.
 * The workload listens on 127.0.0.1 (ephemeral port, written to DIR/port), accepts N
 * connections, queues 200 bytes 's' on each (the peer does not read them yet) and writes
 * DIR/ready. It then waits for DIR/go (created after the restore), and on each connection in
 * order reads 100 bytes 'c' (queued before the checkpoint) and "ping" (sent after the restore),
 * answering "pong". A wrong byte or an early EOF writes DIR/result "FAIL ..."; otherwise
 * "PASS". Bounded: gives up after 120 s without DIR/go. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static const char *dir;

static void put(const char *name, const char *text) {
    char tmp[4096], dst[4096];
    snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name);
    snprintf(dst, sizeof(dst), "%s/%s", dir, name);
    FILE *f = fopen(tmp, "w");
    if (!f) _exit(2);
    fputs(text, f);
    fclose(f);
    rename(tmp, dst);
}

static int exists(const char *name) {
    char p[4096];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

static int read_full(int fd, char *b, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, b + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    dir = argv[1];
    int n = atoi(argv[2]);
    if (n <= 0 || n > 100000) return 2;
    struct rlimit rl = {.rlim_cur = (rlim_t)n + 64, .rlim_max = (rlim_t)n + 64};
    struct rlimit cur;
    getrlimit(RLIMIT_NOFILE, &cur);
    if (cur.rlim_cur < rl.rlim_cur && setrlimit(RLIMIT_NOFILE, &rl)) { perror("setrlimit"); return 2; }
    pid_t pid = fork();
    if (pid != 0) {
        printf("%d\n", (int)pid);
        return pid < 0;
    }
    setsid();
    /* Let the caller's read of our stdout end. */
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) { dup2(null, 0); dup2(null, 1); dup2(null, 2); if (null > 2) close(null); }
    /* Nothing inherited (a build tool's jobserver pipe) may reach the checkpoint. */
    close_range(3, ~0U, 0);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (l < 0 || bind(l, (void *)&a, sizeof a) || listen(l, 4096) || getsockname(l, (void *)&a, &al)) _exit(3);
    char text[64];
    snprintf(text, sizeof text, "%d\n", ntohs(a.sin_port));
    put("port", text);
    int *fds = calloc((size_t)n, sizeof *fds);
    char s[200];
    memset(s, 's', sizeof s);
    for (int i = 0; i < n; i++) {
        fds[i] = accept(l, 0, 0);
        if (fds[i] < 0 || write(fds[i], s, sizeof s) != (ssize_t)sizeof s) _exit(4);
    }
    put("ready", "ready\n");
    for (int t = 0; !exists("go"); t++) {
        if (t > 12000) _exit(5);
        usleep(10000);
    }
    for (int i = 0; i < n; i++) {
        char b[104];
        if (read_full(fds[i], b, sizeof b)) {
            snprintf(text, sizeof text, "FAIL: connection %d: EOF or error\n", i);
            put("result", text);
            _exit(6);
        }
        for (int k = 0; k < 100; k++)
            if (b[k] != 'c') {
                snprintf(text, sizeof text, "FAIL: connection %d byte %d\n", i, k);
                put("result", text);
                _exit(6);
            }
        if (memcmp(b + 100, "ping", 4) || write(fds[i], "pong", 4) != 4) {
            snprintf(text, sizeof text, "FAIL: connection %d ping\n", i);
            put("result", text);
            _exit(6);
        }
    }
    put("result", "PASS\n");
    /* Stay until the peer has read every answer (it closes its ends). */
    for (int t = 0; t < 3000 && !exists("done"); t++) usleep(10000);
    return 0;
}
