/*
 * Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS) and a memfd, both mapped in a parent and
 * three children that keep writing their own slots. After restore each region must still be ONE
 * object: a token the parent writes is seen by every child through its own mapping, and each
 * child's answer is seen by the parent; the memfd fd itself still works (pwrite in a child is
 * visible in the parent's mapping) and keeps its name and size.
 */
#include "zdtm.h"
#include <sys/mman.h>

#define NCHILD 3
#define REGION (1 << 20)
#define SLOT (64 << 10)

struct hdr {
	volatile uint64_t token;
	volatile uint64_t ack[NCHILD + 1];
	volatile uint64_t ticks[NCHILD + 1];
};

static char *shm, *mfd_map;
static int mfd;

static void fill_slots(int who)
{
	zdtm_fill(shm + (who + 1) * SLOT, SLOT, 3000 + who);
	zdtm_fill(mfd_map + (who + 1) * SLOT, SLOT, 4000 + who);
}

static void check_slots(int who)
{
	size_t bad = zdtm_verify(shm + (who + 1) * SLOT, SLOT, 3000 + who);
	ZCHECK(bad == (size_t)-1, "shared anon slot %d differs at %zu", who, bad);
	bad = zdtm_verify(mfd_map + (who + 1) * SLOT, SLOT, 4000 + who);
	ZCHECK(bad == (size_t)-1, "memfd slot %d differs at %zu", who, bad);
}

static void wait_value(volatile uint64_t *p, uint64_t want, const char *what)
{
	uint64_t deadline = zdtm_now_ns() + 20000000000ull;
	while (*p != want) {
		ZCHECK(zdtm_now_ns() < deadline, "%s: saw %llu, want %llu (memory no longer shared?)",
		       what, (unsigned long long)*p, (unsigned long long)want);
		zdtm_msleep(1);
	}
}

static void child(int i)
{
	struct hdr *h = (struct hdr *)shm, *m = (struct hdr *)mfd_map;
	fill_slots(i + 1);
	while (!zdtm_triggered()) {
		h->ticks[i + 1]++;
		m->ticks[i + 1]++;
		zdtm_msleep(3);
	}
	wait_value(&h->token, 0x5eed0001, "child: shm token");
	wait_value(&m->token, 0x5eed0002, "child: memfd token");
	check_slots(i + 1);
	h->ack[i + 1] = 0xac000000 + (uint64_t)i;
	m->ack[i + 1] = 0xbc000000 + (uint64_t)i;
	/* Through the fd: write a marker at the end of our memfd slot. */
	uint64_t marker = 0xfd000000 + (uint64_t)i;
	ZCHECK(pwrite(mfd, &marker, 8, (off_t)(i + 3) * SLOT - 8) == 8, "pwrite memfd");
	exit(0);
}

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	shm = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ZCHECK(shm != MAP_FAILED, "mmap shared anon");
	mfd = memfd_create("zdtm", 0);
	ZCHECK(mfd >= 0, "memfd_create");
	ZCHECK(ftruncate(mfd, REGION) == 0, "ftruncate");
	mfd_map = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	ZCHECK(mfd_map != MAP_FAILED, "mmap memfd");
	fill_slots(0);
	pid_t kids[NCHILD];
	for (int i = 0; i < NCHILD; i++) {
		kids[i] = fork();
		ZCHECK(kids[i] >= 0, "fork");
		if (kids[i] == 0)
			child(i);
	}
	struct hdr *h = (struct hdr *)shm, *m = (struct hdr *)mfd_map;
	/* Ready once every child has written its slots and ticked. */
	for (int i = 1; i <= NCHILD; i++)
		while (h->ticks[i] < 2 || m->ticks[i] < 2)
			zdtm_msleep(2);
	zdtm_ready();
	while (!zdtm_triggered()) {
		h->ticks[0]++;
		zdtm_msleep(3);
	}
	check_slots(0);
	for (int i = 1; i <= NCHILD; i++)
		check_slots(i);
	h->token = 0x5eed0001;
	m->token = 0x5eed0002;
	for (int i = 0; i < NCHILD; i++) {
		wait_value(&h->ack[i + 1], 0xac000000 + (uint64_t)i, "parent: shm ack");
		wait_value(&m->ack[i + 1], 0xbc000000 + (uint64_t)i, "parent: memfd ack");
	}
	for (int i = 0; i < NCHILD; i++) {
		int st = zdtm_wait_child(kids[i], 30000);
		ZCHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d status 0x%x", i, st);
		uint64_t marker = *(volatile uint64_t *)(mfd_map + (i + 3) * SLOT - 8);
		ZCHECK(marker == 0xfd000000 + (uint64_t)i, "memfd pwrite of child %d not visible", i);
	}
	struct stat st;
	ZCHECK(fstat(mfd, &st) == 0 && st.st_size == REGION, "memfd size %lld",
	       (long long)st.st_size);
	char link[256] = { 0 }, proc[64];
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", mfd);
	ZCHECK(readlink(proc, link, sizeof(link) - 1) > 0, "readlink");
	ZCHECK(strncmp(link, "/memfd:zdtm", 11) == 0, "memfd name is %s", link);
	zdtm_pass();
}
