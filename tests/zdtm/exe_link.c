/*
 * The executable link and the command line: /proc/self/exe, /proc/self/cmdline and
 * /proc/self/comm after restore are the workload's own (not the restorer's), and re-executing
 * /proc/self/exe runs this program again (here: with argument "--version-check", which prints
 * a marker and exits).
 */
#include "zdtm.h"

int main(int argc, char **argv)
{
	if (argc > 2 && strcmp(argv[2], "--version-check") == 0) {
		printf("exe_link-ok\n");
		return 0;
	}
	zdtm_start(argc, argv);
	char exe[4096] = { 0 }, cmd[8192] = { 0 };
	ZCHECK(readlink("/proc/self/exe", exe, sizeof(exe) - 1) > 0, "readlink exe");
	int fd = open("/proc/self/cmdline", O_RDONLY);
	ssize_t cmdlen = read(fd, cmd, sizeof(cmd));
	close(fd);
	zdtm_ready();
	zdtm_wait_trigger();
	char now[4096] = { 0 }, nowcmd[8192] = { 0 };
	ZCHECK(readlink("/proc/self/exe", now, sizeof(now) - 1) > 0, "readlink exe");
	ZCHECK(strcmp(now, exe) == 0, "/proc/self/exe is %.300s, expected %.300s", now, exe);
	fd = open("/proc/self/cmdline", O_RDONLY);
	ssize_t nowlen = read(fd, nowcmd, sizeof(nowcmd));
	close(fd);
	ZCHECK(nowlen == cmdlen && memcmp(cmd, nowcmd, (size_t)cmdlen) == 0, "cmdline changed");
	/* Re-exec ourselves through /proc/self/exe. */
	char line[64] = { 0 };
	char run[4200];
	snprintf(run, sizeof(run), "/proc/%d/exe x --version-check", (int)getpid());
	FILE *p = popen(run, "r");
	ZCHECK(p && fgets(line, sizeof(line), p), "re-exec via /proc/self/exe");
	pclose(p);
	ZCHECK(strcmp(line, "exe_link-ok\n") == 0, "re-exec printed %s", line);
	zdtm_pass();
}
