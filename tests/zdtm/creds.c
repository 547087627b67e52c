/*
 * Credentials: a child switches to distinct real/effective/saved uids and gids and a
 * supplementary group list, then keeps running. After restore its getresuid/getresgid and
 * getgroups are unchanged (and it still cannot do what root could).
 */
#include "zdtm.h"
#include <grp.h>

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	int made[2];
	ZCHECK(pipe(made) == 0, "pipe");
	pid_t child = fork();
	ZCHECK(child >= 0, "fork");
	if (child == 0) {
		close(made[0]);
		gid_t groups[] = { 5, 6, 7 };
		ZCHECK(setgroups(3, groups) == 0, "setgroups");
		ZCHECK(setresgid(1001, 1002, 1003) == 0, "setresgid");
		ZCHECK(setresuid(2001, 2002, 2003) == 0, "setresuid");
		ZCHECK(write(made[1], "c", 1) == 1, "tell the parent");
		close(made[1]);
		zdtm_wait_trigger();
		uid_t r, e, s;
		gid_t gr, ge, gs;
		ZCHECK(getresuid(&r, &e, &s) == 0 && r == 2001 && e == 2002 && s == 2003,
		       "uids %u %u %u", r, e, s);
		ZCHECK(getresgid(&gr, &ge, &gs) == 0 && gr == 1001 && ge == 1002 && gs == 1003,
		       "gids %u %u %u", gr, ge, gs);
		gid_t now[16];
		int n = getgroups(16, now);
		ZCHECK(n == 3 && now[0] == 5 && now[1] == 6 && now[2] == 7, "%d supplementary groups", n);
		ZCHECK(setresuid(0, 0, 0) != 0, "regained root");
		_exit(0);
	}
	close(made[1]);
	char c;
	ZCHECK(read(made[0], &c, 1) == 1, "child did not change credentials");
	close(made[0]);
	zdtm_ready();
	zdtm_wait_trigger();
	int st = zdtm_wait_child(child, 30000);
	ZCHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status 0x%x (see log)", st);
	zdtm_pass();
}
