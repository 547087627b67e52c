/*
 * Time and CPU through the vDSO and rseq after restore: clock_gettime (vDSO) keeps working and
 * CLOCK_MONOTONIC never goes backwards, gettimeofday and time agree with the raw syscalls, the
 * vDSO is where the auxiliary vector says, and sched_getcpu (glibc reads the rseq area the kernel
 * updates) agrees with the getcpu syscall, i.e. rseq is still registered.
 */
#include "zdtm.h"
#include <sched.h>
#include <sys/auxv.h>
#include <sys/time.h>

static int vdso_mapped_at(unsigned long addr)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	int ok = 0;
	while (f && fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && lo == addr && strstr(line, "[vdso]"))
			ok = 1;
	}
	if (f)
		fclose(f);
	return ok;
}

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	unsigned long vdso = getauxval(AT_SYSINFO_EHDR);
	ZCHECK(vdso && vdso_mapped_at(vdso), "vDSO not at AT_SYSINFO_EHDR before checkpoint");
	struct timespec last;
	clock_gettime(CLOCK_MONOTONIC, &last);
	zdtm_ready();
	while (!zdtm_triggered()) {
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		ZCHECK(now.tv_sec > last.tv_sec || (now.tv_sec == last.tv_sec && now.tv_nsec >= last.tv_nsec),
		       "CLOCK_MONOTONIC went backwards");
		last = now;
		zdtm_msleep(2);
	}
	ZCHECK(vdso_mapped_at(vdso), "vDSO no longer at AT_SYSINFO_EHDR %#lx", vdso);
	for (int i = 0; i < 100; i++) {
		/* The vDSO reading must fall between two syscall readings: no bound on how long the
		 * process may be preempted between the calls (a loaded machine; the old check allowed
		 * 100 ms), yet a vDSO whose clock data were not restored fails it. */
		struct timespec v, k1, k2;
		ZCHECK(syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &k1) == 0, "raw clock_gettime");
		ZCHECK(clock_gettime(CLOCK_MONOTONIC, &v) == 0, "vDSO clock_gettime");
		ZCHECK(syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &k2) == 0, "raw clock_gettime");
		int64_t d1 = (int64_t)(v.tv_sec - k1.tv_sec) * 1000000000LL + (v.tv_nsec - k1.tv_nsec);
		int64_t d2 = (int64_t)(k2.tv_sec - v.tv_sec) * 1000000000LL + (k2.tv_nsec - v.tv_nsec);
		/* (1 ms of slack: the vDSO's copy of the clock data is updated just after the
		 * kernel's, and either may be read in between) */
		ZCHECK(d1 >= -1000000LL && d2 >= -1000000LL,
		       "vDSO CLOCK_MONOTONIC %lld ns outside the syscall's readings around it (%lld ns after)",
		       (long long)(d1 < 0 ? d1 : -d2), (long long)d2);
		ZCHECK(v.tv_sec > last.tv_sec || (v.tv_sec == last.tv_sec && v.tv_nsec >= last.tv_nsec),
		       "CLOCK_MONOTONIC went backwards after restore");
		struct timeval tv;
		ZCHECK(gettimeofday(&tv, NULL) == 0, "gettimeofday");
		time_t kt1 = (time_t)syscall(SYS_time, NULL);
		time_t t = time(NULL);
		time_t kt2 = (time_t)syscall(SYS_time, NULL);
		ZCHECK(t >= kt1 - 1 && t <= kt2 + 1, "time() %ld outside the syscall's %ld..%ld", (long)t,
		       (long)kt1, (long)kt2);
		unsigned cpu = 0;
		int g = sched_getcpu();
		ZCHECK(syscall(SYS_getcpu, &cpu, NULL, NULL) == 0, "getcpu");
		/* A migration between the two calls is possible: retry a few times before failing. */
		if (g != (int)cpu && i < 99)
			continue;
		ZCHECK(g == (int)cpu || i < 99, "sched_getcpu %d vs getcpu %u (rseq lost?)", g, cpu);
		break;
	}
	zdtm_pass();
}
