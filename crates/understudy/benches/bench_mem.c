/*
 * ckpt_bench's workload: a root holding SIZE MiB of touched anonymous memory and one small
 * child. Usage: bench_mem DIR SIZE_MIB. Prints the root's pid and runs in the background.
 * Writes DIR/region ("ADDR LEN") and DIR/ready; on DIR/check verifies every page and writes
 * DIR/result (PASS or FAIL) and exits.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *dir;

static void put(const char *name, const char *text)
{
	char tmp[4096], dst[4096];
	snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name);
	snprintf(dst, sizeof(dst), "%s/%s", dir, name);
	FILE *f = fopen(tmp, "w");
	if (!f)
		_exit(90);
	fputs(text, f);
	fclose(f);
	rename(tmp, dst);
}

static int exists(const char *name)
{
	char p[4096];
	snprintf(p, sizeof(p), "%s/%s", dir, name);
	return access(p, F_OK) == 0;
}

static void msleep(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	dir = argv[1];
	size_t len = (size_t)strtoull(argv[2], NULL, 10) << 20;
	pid_t pid = fork();
	if (pid != 0) {
		printf("%d\n", (int)pid);
		return pid < 0;
	}
	setsid();
	/* Fds inherited from whoever started us (e.g. a jobserver pipe) are not ours. */
	syscall(SYS_close_range, 3, ~0U, 0);
	int nul = open("/dev/null", O_RDWR);
	dup2(nul, 0);
	dup2(nul, 1);
	dup2(nul, 2);
	close(nul);
	/* The child first, so it shares none of the memory: the tree holds SIZE MiB, not twice. */
	pid_t child = fork();
	if (child == 0) {
		while (!exists("check"))
			msleep(10);
		_exit(0);
	}
	unsigned char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return 3;
	for (size_t off = 0; off < len; off += 4096) {
		memset(mem + off, (int)(off >> 12) & 0xff, 4096);
		*(uint64_t *)(mem + off) = off;
	}
	char text[128];
	snprintf(text, sizeof(text), "%lu %zu\n", (unsigned long)(uintptr_t)mem, len);
	put("region", text);
	put("ready", "ready\n");
	while (!exists("check"))
		msleep(10);
	for (size_t off = 0; off < len; off += 4096) {
		if (*(uint64_t *)(mem + off) != off || mem[off + 4095] != ((off >> 12) & 0xff)) {
			snprintf(text, sizeof(text), "FAIL: page at offset %zu differs\n", off);
			put("result", text);
			return 1;
		}
	}
	int st;
	if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		put("result", "FAIL: child\n");
		return 1;
	}
	put("result", "PASS\n");
	return 0;
}
