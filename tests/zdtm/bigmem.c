/*
 * A 64 MiB heap buffer filled with a pseudo-random pattern, its checksum kept in memory; a
 * small part is rewritten continuously while waiting. After restore the checksum of the whole
 * buffer must match.
 */
#include "zdtm.h"

#define LEN (64ull << 20)

static uint64_t checksum(const uint64_t *p, size_t n)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 1099511628211ull;
	return h;
}

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	uint64_t *buf = malloc(LEN);
	ZCHECK(buf, "malloc");
	zdtm_fill(buf, LEN, 7000);
	uint64_t sum = checksum(buf, LEN / 8);
	zdtm_ready();
	/* Keep flipping one word back and forth: the checksum holds whenever we stop between steps. */
	uint64_t step = 0;
	while (!zdtm_triggered()) {
		size_t i = (size_t)(step * 4099) % (LEN / 8);
		buf[i] = ~buf[i];
		buf[i] = ~buf[i];
		step++;
		if (step % 1024 == 0)
			zdtm_msleep(2);
	}
	uint64_t now = checksum(buf, LEN / 8);
	ZCHECK(now == sum, "checksum %016llx, expected %016llx", (unsigned long long)now,
	       (unsigned long long)sum);
	ZCHECK(zdtm_verify(buf, LEN, 7000) == (size_t)-1, "pattern differs");
	zdtm_pass();
}
