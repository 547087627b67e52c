/*
 * Sparse and reshaped memory: a 1 GiB MAP_NORESERVE region with 3 touched pages, a region
 * grown with mremap (moved), a hole punched with madvise(MADV_DONTNEED), and one mapping split
 * into three protections. After restore the touched pages hold their data, everything else
 * reads zero, the protections are as set, and the image stays small (the harness checks the
 * image holds well under 64 MiB).
 */
#include "zdtm.h"
#include <sys/mman.h>

#define PAGE 4096
#define BIG (1ul << 30)

static int perms_are(void *addr, const char *want)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	int ok = 0;
	while (f && fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		char perm[5];
		if (sscanf(line, "%lx-%lx %4s", &lo, &hi, perm) == 3 && lo <= (unsigned long)addr &&
		    (unsigned long)addr < hi)
			ok = strncmp(perm, want, 4) == 0;
	}
	if (f)
		fclose(f);
	return ok;
}

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	char *big = mmap(NULL, BIG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			 -1, 0);
	ZCHECK(big != MAP_FAILED, "mmap 1 GiB");
	size_t touched[3] = { 0, BIG / 2, BIG - PAGE };
	for (int i = 0; i < 3; i++)
		zdtm_fill(big + touched[i], PAGE, 100 + i);

	char *grow = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ZCHECK(grow != MAP_FAILED, "mmap grow");
	zdtm_fill(grow, 4 * PAGE, 200);
	grow = mremap(grow, 4 * PAGE, 64 * PAGE, MREMAP_MAYMOVE);
	ZCHECK(grow != MAP_FAILED, "mremap");
	zdtm_fill(grow + 60 * PAGE, 4 * PAGE, 201);

	char *holed = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ZCHECK(holed != MAP_FAILED, "mmap holed");
	zdtm_fill(holed, 16 * PAGE, 300);
	ZCHECK(madvise(holed + 4 * PAGE, 8 * PAGE, MADV_DONTNEED) == 0, "madvise");

	char *split = mmap(NULL, 9 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ZCHECK(split != MAP_FAILED, "mmap split");
	zdtm_fill(split, 9 * PAGE, 400);
	ZCHECK(mprotect(split + 3 * PAGE, 3 * PAGE, PROT_READ) == 0, "mprotect ro");
	ZCHECK(mprotect(split + 6 * PAGE, 3 * PAGE, PROT_READ | PROT_WRITE | PROT_EXEC) == 0, "mprotect rwx");

	zdtm_ready();
	zdtm_wait_trigger();
	for (int i = 0; i < 3; i++)
		ZCHECK(zdtm_verify(big + touched[i], PAGE, 100 + i) == (size_t)-1, "touched page %d", i);
	for (size_t off = PAGE; off < BIG - PAGE; off += 1021 * PAGE)
		if (off != BIG / 2)
			ZCHECK(*(uint64_t *)(big + off) == 0, "untouched page at %zu not zero", off);
	ZCHECK(zdtm_verify(grow, 4 * PAGE, 200) == (size_t)-1, "mremapped data");
	ZCHECK(*(uint64_t *)(grow + 10 * PAGE) == 0, "grown part not zero");
	ZCHECK(zdtm_verify(grow + 60 * PAGE, 4 * PAGE, 201) == (size_t)-1, "grown part data");
	char ref[16 * PAGE];
	zdtm_fill(ref, sizeof(ref), 300);
	ZCHECK(memcmp(holed, ref, 4 * PAGE) == 0 && memcmp(holed + 12 * PAGE, ref + 12 * PAGE, 4 * PAGE) == 0,
	       "holed region data");
	for (size_t off = 4 * PAGE; off < 12 * PAGE; off += 8)
		ZCHECK(*(uint64_t *)(holed + off) == 0, "madvised hole not zero at %zu", off);
	ZCHECK(zdtm_verify(split, 9 * PAGE, 400) == (size_t)-1, "split data");
	ZCHECK(perms_are(split, "rw-p") && perms_are(split + 3 * PAGE, "r--p") &&
	       perms_are(split + 6 * PAGE, "rwxp"), "split protections");
	zdtm_pass();
}
