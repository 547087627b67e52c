/*
 * Single-threaded memory patterns: private anonymous memory (touched, partly untouched), heap
 * (malloc chunks and sbrk), stack, a private file mapping with some pages written (COW) and
 * others clean, a shared file mapping, a read-only region, a PROT_NONE region between guard
 * pages. Verifies contents, protections (from /proc/self/maps) and that addresses did not move.
 */
#include "zdtm.h"
#include <sys/mman.h>

#define PAGE 4096
#define ANON_LEN (4 << 20)
#define FILE_LEN (16 * PAGE)

static char *anon, *ro, *none, *fpriv, *fshared, *untouched, *brk_area;
static char *heap_chunks[64];
static size_t heap_len[64];
static volatile uint64_t work_a, work_b;

/* Finds the line of /proc/self/maps that starts at ADDR and returns its permission string. */
static int perms_of(void *addr, char out[5])
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	int found = 0;
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		char perm[5];
		if (sscanf(line, "%lx-%lx %4s", &lo, &hi, perm) == 3 && lo <= (unsigned long)addr &&
		    (unsigned long)addr < hi) {
			memcpy(out, perm, 5);
			found = 1;
			break;
		}
	}
	fclose(f);
	return found;
}

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	char path[4096];
	char stack_buf[32768];
	zdtm_fill(stack_buf, sizeof(stack_buf), 11);

	anon = mmap(NULL, ANON_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ZCHECK(anon != MAP_FAILED, "mmap anon");
	/* Touch every other 64 KiB so the region has holes that must stay zero. */
	for (size_t off = 0; off < ANON_LEN; off += 128 << 10)
		zdtm_fill(anon + off, 64 << 10, 100 + off);

	untouched = mmap(NULL, 8 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ZCHECK(untouched != MAP_FAILED, "mmap untouched");

	for (int i = 0; i < 64; i++) {
		heap_len[i] = 64 + (size_t)i * 1024;
		heap_chunks[i] = malloc(heap_len[i]);
		ZCHECK(heap_chunks[i], "malloc");
		zdtm_fill(heap_chunks[i], heap_len[i], 200 + i);
	}
	brk_area = sbrk(0);
	ZCHECK(sbrk(3 * PAGE) != (void *)-1, "sbrk");
	zdtm_fill(brk_area, 3 * PAGE, 300);

	/* Read-only and PROT_NONE regions, each between PROT_NONE guard pages. */
	char *block = mmap(NULL, 7 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ZCHECK(block != MAP_FAILED, "mmap block");
	ro = block + PAGE;
	none = block + 4 * PAGE;
	zdtm_fill(ro, 2 * PAGE, 400);
	zdtm_fill(none, 2 * PAGE, 500);
	ZCHECK(mprotect(block, PAGE, PROT_NONE) == 0, "guard 0");
	ZCHECK(mprotect(ro, 2 * PAGE, PROT_READ) == 0, "mprotect ro");
	ZCHECK(mprotect(block + 3 * PAGE, PAGE, PROT_NONE) == 0, "guard 1");
	ZCHECK(mprotect(none, 2 * PAGE, PROT_NONE) == 0, "mprotect none");
	ZCHECK(mprotect(block + 6 * PAGE, PAGE, PROT_NONE) == 0, "guard 2");

	/* A file written with a pattern, mapped privately (half the pages then rewritten) and shared. */
	zdtm_path(path, sizeof(path), "mapped.bin");
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	ZCHECK(fd >= 0, "open mapped.bin");
	char *tmp = malloc(FILE_LEN);
	zdtm_fill(tmp, FILE_LEN, 600);
	ZCHECK(write(fd, tmp, FILE_LEN) == FILE_LEN, "write file");
	free(tmp);
	fpriv = mmap(NULL, FILE_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	ZCHECK(fpriv != MAP_FAILED, "mmap private file");
	for (int pg = 0; pg < 16; pg += 2)
		zdtm_fill(fpriv + pg * PAGE, PAGE, 700 + pg);
	fshared = mmap(NULL, FILE_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ZCHECK(fshared != MAP_FAILED, "mmap shared file");
	zdtm_fill(fshared + 15 * PAGE, PAGE, 800);
	close(fd);

	char *where[] = { anon, untouched, ro, none, fpriv, fshared, brk_area };
	void *addr_copy[7];
	memcpy(addr_copy, where, sizeof(where));

	zdtm_ready();
	while (!zdtm_triggered()) {
		for (int i = 0; i < 10000; i++) {
			work_a += (uint64_t)i * 3;
			work_b += (uint64_t)i;
		}
		zdtm_msleep(2);
	}

	ZCHECK(work_a == 3 * work_b, "counters diverged: %llu vs %llu", (unsigned long long)work_a,
	       (unsigned long long)work_b);
	ZCHECK(memcmp(addr_copy, where, sizeof(where)) == 0, "saved addresses changed");
	ZCHECK(zdtm_verify(stack_buf, sizeof(stack_buf), 11) == (size_t)-1, "stack buffer");
	for (size_t off = 0; off < ANON_LEN; off += 128 << 10) {
		size_t bad = zdtm_verify(anon + off, 64 << 10, 100 + off);
		ZCHECK(bad == (size_t)-1, "anon chunk at %zu differs at +%zu", off, bad);
		for (size_t z = off + (64 << 10); z < off + (128 << 10); z += 8)
			ZCHECK(*(uint64_t *)(anon + z) == 0, "anon hole at %zu not zero", z);
	}
	for (size_t z = 0; z < (8 << 20); z += 512)
		ZCHECK(*(uint64_t *)(untouched + z) == 0, "untouched region not zero at %zu", z);
	for (int i = 0; i < 64; i++)
		ZCHECK(zdtm_verify(heap_chunks[i], heap_len[i], 200 + i) == (size_t)-1, "heap chunk %d", i);
	ZCHECK(zdtm_verify(brk_area, 3 * PAGE, 300) == (size_t)-1, "brk area");
	ZCHECK((char *)sbrk(0) >= brk_area + 3 * PAGE, "program break went back: %p < %p", sbrk(0),
	       brk_area + 3 * PAGE);
	/* The heap must still grow and shrink after a restore. */
	void *big[32];
	for (int i = 0; i < 32; i++) {
		big[i] = malloc(100000);
		ZCHECK(big[i], "malloc after restore");
		memset(big[i], i, 100000);
	}
	for (int i = 0; i < 32; i++)
		free(big[i]);

	char perm[5];
	ZCHECK(perms_of(ro, perm) && strncmp(perm, "r--p", 4) == 0, "read-only region perms %s", perm);
	ZCHECK(perms_of(none, perm) && strncmp(perm, "---p", 4) == 0, "PROT_NONE region perms %s", perm);
	ZCHECK(perms_of(block, perm) && strncmp(perm, "---p", 4) == 0, "guard page perms %s", perm);
	ZCHECK(perms_of(fpriv, perm) && strncmp(perm, "rw-p", 4) == 0, "private file perms %s", perm);
	ZCHECK(perms_of(fshared, perm) && strncmp(perm, "rw-s", 4) == 0, "shared file perms %s", perm);
	ZCHECK(zdtm_verify(ro, 2 * PAGE, 400) == (size_t)-1, "read-only contents");
	ZCHECK(mprotect(none, 2 * PAGE, PROT_READ) == 0, "mprotect none->read");
	ZCHECK(zdtm_verify(none, 2 * PAGE, 500) == (size_t)-1, "PROT_NONE contents");

	/* Private file pages: even pages rewritten by us, odd pages still the file's. */
	char *orig = malloc(FILE_LEN);
	zdtm_fill(orig, FILE_LEN, 600);
	for (int pg = 0; pg < 16; pg++) {
		if (pg % 2 == 0)
			ZCHECK(zdtm_verify(fpriv + pg * PAGE, PAGE, 700 + pg) == (size_t)-1,
			       "private file page %d (written)", pg);
		else if (pg == 15) /* never written privately: shows the file, rewritten via fshared */
			ZCHECK(zdtm_verify(fpriv + pg * PAGE, PAGE, 800) == (size_t)-1,
			       "private file page 15 (clean, file rewritten through the shared map)");
		else
			ZCHECK(memcmp(fpriv + pg * PAGE, orig + pg * PAGE, PAGE) == 0,
			       "private file page %d (clean)", pg);
	}
	/* The shared mapping writes through to the file; the private one never does. */
	ZCHECK(memcmp(fshared, orig, 15 * PAGE) == 0, "shared file mapping contents");
	ZCHECK(zdtm_verify(fshared + 15 * PAGE, PAGE, 800) == (size_t)-1, "shared file last page");
	fd = open(path, O_RDONLY);
	char pagebuf[PAGE];
	ZCHECK(pread(fd, pagebuf, PAGE, 15 * PAGE) == PAGE, "pread");
	ZCHECK(zdtm_verify(pagebuf, PAGE, 800) == (size_t)-1, "shared write did not reach the file");
	ZCHECK(pread(fd, pagebuf, PAGE, 0) == PAGE, "pread");
	ZCHECK(memcmp(pagebuf, orig, PAGE) == 0, "private write leaked into the file");
	fshared[0] = 'x';
	ZCHECK(pread(fd, pagebuf, 1, 0) == 1 && pagebuf[0] == 'x', "shared mapping no longer shared");
	close(fd);
	zdtm_pass();
}
