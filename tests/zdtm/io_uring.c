/*
 * Holds an io_uring instance, which understudy cannot checkpoint: `checkpoint` must fail naming
 * it and leave this process running and untouched. After the failed attempt the harness
 * triggers the check: the ring still works (a NOP round trip is not needed; the fd must still
 * be an io_uring and our memory intact).
 * Exit status 3 before zdtm_start's fork means io_uring is unavailable here (the test skips).
 */
#include "zdtm.h"
#include <linux/io_uring.h>
#include <sys/mman.h>

int main(int argc, char **argv)
{
	struct io_uring_params params;
	memset(&params, 0, sizeof(params));
	int probe = (int)syscall(__NR_io_uring_setup, 4, &params);
	if (probe < 0) {
		printf("unavailable\n");
		return 3;
	}
	close(probe);
	zdtm_start(argc, argv);
	memset(&params, 0, sizeof(params));
	int ring = (int)syscall(__NR_io_uring_setup, 4, &params);
	ZCHECK(ring >= 0, "io_uring_setup");
	char *mem = malloc(1 << 20);
	zdtm_fill(mem, 1 << 20, 8000);
	volatile uint64_t counter = 0;
	zdtm_ready();
	while (!zdtm_triggered()) {
		counter++;
		zdtm_msleep(2);
	}
	char link[128] = { 0 }, proc[64];
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", ring);
	ZCHECK(readlink(proc, link, sizeof(link) - 1) > 0 && strstr(link, "io_uring"),
	       "ring fd is now %s", link);
	ZCHECK(zdtm_verify(mem, 1 << 20, 8000) == (size_t)-1, "memory changed");
	ZCHECK(counter > 0, "never ran");
	zdtm_pass();
}
