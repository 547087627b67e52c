/*
 * Per-process attributes: umask, current directory (a subdirectory of the run directory),
 * lowered soft and hard rlimits. After restore every one is as it was. (The process name is
 * checked by proc_name.c.)
 */
#include "zdtm.h"
#include <sys/resource.h>

static const int res[] = { RLIMIT_NOFILE, RLIMIT_CORE, RLIMIT_STACK, RLIMIT_NPROC };
static struct rlimit lim[4];

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	char sub[4096];
	zdtm_path(sub, sizeof(sub), "sub dir");
	ZCHECK(mkdir(sub, 0755) == 0, "mkdir");
	ZCHECK(chdir(sub) == 0, "chdir");
	umask(027);
	for (int i = 0; i < 4; i++) {
		ZCHECK(getrlimit(res[i], &lim[i]) == 0, "getrlimit");
		/* Lower what can be lowered (root here cannot raise hard limits). */
		if (lim[i].rlim_cur == RLIM_INFINITY || lim[i].rlim_cur > 1000 + (rlim_t)i)
			lim[i].rlim_cur = 1000 + (rlim_t)i;
		if (lim[i].rlim_max == RLIM_INFINITY || lim[i].rlim_max > 100000 + (rlim_t)i)
			lim[i].rlim_max = 100000 + (rlim_t)i;
		if (res[i] == RLIMIT_STACK)
			lim[i].rlim_cur = 4 << 20;
		if (lim[i].rlim_cur > lim[i].rlim_max)
			lim[i].rlim_cur = lim[i].rlim_max;
		ZCHECK(setrlimit(res[i], &lim[i]) == 0, "setrlimit %d", res[i]);
	}
	zdtm_ready();
	while (!zdtm_triggered())
		zdtm_msleep(5);
	char cwd[4096];
	ZCHECK(getcwd(cwd, sizeof(cwd)) && strcmp(cwd, sub) == 0, "cwd is %.500s, expected %.500s", cwd, sub);
	mode_t old = umask(022);
	ZCHECK(old == 027, "umask %03o, expected 027", old);
	for (int i = 0; i < 4; i++) {
		struct rlimit now;
		ZCHECK(getrlimit(res[i], &now) == 0, "getrlimit");
		ZCHECK(now.rlim_cur == lim[i].rlim_cur && now.rlim_max == lim[i].rlim_max,
		       "rlimit %d is %llu/%llu, expected %llu/%llu", res[i],
		       (unsigned long long)now.rlim_cur, (unsigned long long)now.rlim_max,
		       (unsigned long long)lim[i].rlim_cur, (unsigned long long)lim[i].rlim_max);
	}
	umask(027);
	int fd = open("created", O_WRONLY | O_CREAT, 0666);
	struct stat st;
	ZCHECK(fd >= 0 && fstat(fd, &st) == 0 && (st.st_mode & 0777) == 0640,
	       "file created with mode %03o", st.st_mode & 0777);
	zdtm_pass();
}
