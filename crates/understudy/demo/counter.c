/*
 * The demo's workload: a parent and three workers. Each worker counts (in a page of anonymous
 * memory shared by the four processes with --shared, else in its own memory) and sends every
 * new count to the parent through its own pipe; the parent checks
 * that each worker's counts arrive exactly once and in order, and twice a second rewrites
 * DIR/progress with the totals and the number of gaps or repeats seen (0 when nothing was lost
 * or replayed). Usage: counter DIR [--shared] [--foreground]: prints the parent's pid and runs
 * in the background, or with --foreground (under `understudy run`) simply runs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define WORKERS 3

struct shared {
	volatile uint64_t count[WORKERS];
};

static void msleep(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void worker(int i, struct shared *sh, int wfd)
{
	for (;;) {
		uint64_t next = sh->count[i] + 1;
		sh->count[i] = next;
		if (write(wfd, &next, sizeof(next)) != sizeof(next))
			_exit(1);
		msleep(10 + 5 * i);
	}
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	const char *dir = argv[1];
	int shared = 0, foreground = 0;
	for (int i = 2; i < argc; i++) {
		shared |= strcmp(argv[i], "--shared") == 0;
		foreground |= strcmp(argv[i], "--foreground") == 0;
	}
	/* In the foreground (under `understudy run`) the supervisor gives us our session. */
	if (!foreground) {
		pid_t pid = fork();
		if (pid < 0)
			return 2;
		if (pid > 0) {
			printf("%d\n", (int)pid);
			return 0;
		}
		setsid();
	}
	/* Fds inherited from whoever started us (e.g. a jobserver pipe) are not ours. */
	syscall(SYS_close_range, 3, ~0U, 0);
	int nul = open("/dev/null", O_RDWR);
	dup2(nul, 0);
	dup2(nul, 1);
	dup2(nul, 2);
	struct shared *sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
				 (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		return 3;
	struct pollfd pfd[WORKERS];
	pid_t kids[WORKERS];
	for (int i = 0; i < WORKERS; i++) {
		int p[2];
		if (pipe(p) != 0)
			return 4;
		kids[i] = fork();
		if (kids[i] == 0) {
			close(p[0]);
			worker(i, sh, p[1]);
		}
		close(p[1]);
		pfd[i].fd = p[0];
		pfd[i].events = POLLIN;
	}
	uint64_t seen[WORKERS] = { 0 }, anomalies = 0, rounds = 0;
	char path[4096], tmp[4096];
	snprintf(path, sizeof(path), "%s/progress", dir);
	snprintf(tmp, sizeof(tmp), "%s/.progress.tmp", dir);
	for (;;) {
		if (poll(pfd, WORKERS, 500) < 0 && errno != EINTR)
			return 5;
		for (int i = 0; i < WORKERS; i++) {
			if (!(pfd[i].revents & POLLIN))
				continue;
			uint64_t v;
			if (read(pfd[i].fd, &v, sizeof(v)) != sizeof(v))
				return 6;
			if (v != seen[i] + 1)
				anomalies++;
			seen[i] = v;
		}
		if (++rounds % 16 != 0)
			continue;
		uint64_t total = seen[0] + seen[1] + seen[2];
		FILE *f = fopen(tmp, "w");
		if (!f)
			continue;
		fprintf(f, "pids %d %d %d %d\ntotal %llu\nworkers %llu %llu %llu\nanomalies %llu\n",
			(int)getpid(), (int)kids[0], (int)kids[1], (int)kids[2],
			(unsigned long long)total, (unsigned long long)seen[0],
			(unsigned long long)seen[1], (unsigned long long)seen[2],
			(unsigned long long)anomalies);
		fclose(f);
		rename(tmp, path);
	}
}
