/*
 * System V shared memory: a segment created with shmget, attached in the root and a child,
 * written by both. After restore the segment id is still valid, both attachments are one
 * object (a write in one is seen in the other) and the data is intact.
 */
#include "zdtm.h"
#include <sys/ipc.h>
#include <sys/shm.h>

#define LEN (256 << 10)

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	int id = shmget(IPC_PRIVATE, LEN, IPC_CREAT | 0600);
	ZCHECK(id >= 0, "shmget");
	char *mem = shmat(id, NULL, 0);
	ZCHECK(mem != (void *)-1, "shmat");
	/* Removed once everyone detaches, even if the test dies. */
	ZCHECK(shmctl(id, IPC_RMID, NULL) == 0, "IPC_RMID");
	zdtm_fill(mem, LEN / 2, 9000);
	int made[2];
	ZCHECK(pipe(made) == 0, "pipe");
	pid_t child = fork();
	ZCHECK(child >= 0, "fork");
	if (child == 0) {
		close(made[0]);
		zdtm_fill(mem + LEN / 2, LEN / 2, 9001);
		ZCHECK(write(made[1], "c", 1) == 1, "sync");
		close(made[1]);
		zdtm_wait_trigger();
		/* Wait for the parent's post-restore token through the segment. */
		uint64_t deadline = zdtm_now_ns() + 20000000000ull;
		while (*(volatile uint64_t *)mem != 0xabcdef) {
			ZCHECK(zdtm_now_ns() < deadline, "token never seen: segment no longer shared");
			zdtm_msleep(2);
		}
		_exit(0);
	}
	close(made[1]);
	char c;
	ZCHECK(read(made[0], &c, 1) == 1, "child setup");
	close(made[0]);
	zdtm_ready();
	zdtm_wait_trigger();
	struct shmid_ds ds;
	ZCHECK(shmctl(id, IPC_STAT, &ds) == 0, "segment id %d no longer valid", id);
	ZCHECK(ds.shm_segsz == LEN, "segment size %zu", (size_t)ds.shm_segsz);
	ZCHECK(zdtm_verify(mem, LEN / 2, 9000) == (size_t)-1, "root's half");
	ZCHECK(zdtm_verify(mem + LEN / 2, LEN / 2, 9001) == (size_t)-1, "child's half");
	*(volatile uint64_t *)mem = 0xabcdef;
	int st = zdtm_wait_child(child, 30000);
	ZCHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status 0x%x", st);
	zdtm_pass();
}
