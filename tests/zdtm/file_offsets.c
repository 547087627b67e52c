/*
 * File descriptors and their open file descriptions: offsets of O_RDWR and O_RDONLY files, an
 * O_APPEND file whose offset was moved back, a dup()ed fd and a fork()-inherited fd sharing one
 * offset (across two processes), close-on-exec flags, a directory fd, /dev/null and
 * /dev/urandom. After restore: every offset, status flag and fd flag is as before, the shared
 * descriptions are still shared, O_APPEND writes still go to the end, contents are intact.
 */
#include "zdtm.h"
#include <dirent.h>

#define RW_LEN 10000

static int rw, ro, ap, dupfd, shared, dir, devnull, urandom;
static struct stat dir_st;

static void expect_fd(int fd, off_t off, int acc, int fl_extra, int cloexec, const char *what)
{
	off_t got = lseek(fd, 0, SEEK_CUR);
	ZCHECK(got == off, "%s: offset %lld, expected %lld", what, (long long)got, (long long)off);
	int fl = fcntl(fd, F_GETFL);
	ZCHECK(fl >= 0 && (fl & O_ACCMODE) == acc, "%s: access mode 0x%x", what, fl);
	ZCHECK((fl & (O_APPEND | O_NONBLOCK)) == fl_extra, "%s: status flags 0x%x", what, fl);
	int fdfl = fcntl(fd, F_GETFD);
	ZCHECK(!!(fdfl & FD_CLOEXEC) == cloexec, "%s: FD_CLOEXEC %d", what, fdfl);
}

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	char p_rw[4096], p_ro[4096], p_ap[4096], p_sh[4096];
	zdtm_path(p_rw, sizeof(p_rw), "rw.bin");
	zdtm_path(p_ro, sizeof(p_ro), "ro.bin");
	zdtm_path(p_ap, sizeof(p_ap), "append.log");
	zdtm_path(p_sh, sizeof(p_sh), "shared.bin");
	char *data = malloc(RW_LEN);
	zdtm_fill(data, RW_LEN, 5000);

	rw = open(p_rw, O_RDWR | O_CREAT | O_TRUNC, 0644);
	ZCHECK(rw >= 0 && write(rw, data, RW_LEN) == RW_LEN, "rw file");
	ZCHECK(lseek(rw, 1234, SEEK_SET) == 1234, "lseek rw");
	int tmp = open(p_ro, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	ZCHECK(tmp >= 0 && write(tmp, data, RW_LEN) == RW_LEN, "ro file");
	close(tmp);
	ro = open(p_ro, O_RDONLY | O_CLOEXEC);
	ZCHECK(ro >= 0 && lseek(ro, 777, SEEK_SET) == 777, "ro file");
	ap = open(p_ap, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
	ZCHECK(ap >= 0 && write(ap, "line-1\n", 7) == 7, "append file");
	ZCHECK(lseek(ap, 2, SEEK_SET) == 2, "lseek append");
	dupfd = dup(rw);
	ZCHECK(dupfd >= 0, "dup");
	tmp = open(p_sh, O_RDWR | O_CREAT | O_TRUNC, 0644);
	ZCHECK(tmp >= 0 && write(tmp, data, RW_LEN) == RW_LEN, "shared file");
	ZCHECK(lseek(tmp, 100, SEEK_SET) == 100, "lseek shared");
	/* A high fd number, to be restored at the same number. */
	shared = dup2(tmp, 77);
	ZCHECK(shared == 77, "dup2");
	close(tmp);
	dir = open(argv[1], O_RDONLY | O_DIRECTORY);
	ZCHECK(dir >= 0 && fstat(dir, &dir_st) == 0, "directory fd");
	devnull = open("/dev/null", O_WRONLY | O_NONBLOCK);
	urandom = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	ZCHECK(devnull >= 0 && urandom >= 0, "devices");

	int go[2];
	ZCHECK(pipe(go) == 0, "pipe");
	pid_t child = fork();
	ZCHECK(child >= 0, "fork");
	if (child == 0) {
		close(go[1]);
		/* The child moves the shared offset after the restore; the parent must see it. */
		char c;
		if (read(go[0], &c, 1) != 1)
			_exit(30);
		if (lseek(shared, 0, SEEK_CUR) != 100)
			_exit(31);
		char buf[50];
		if (read(shared, buf, 50) != 50 || memcmp(buf, data + 100, 50) != 0)
			_exit(32);
		_exit(0);
	}
	close(go[0]);
	zdtm_ready();
	zdtm_wait_trigger();

	expect_fd(rw, 1234, O_RDWR, 0, 0, "rw");
	expect_fd(dupfd, 1234, O_RDWR, 0, 0, "dup of rw");
	expect_fd(ro, 777, O_RDONLY, 0, 1, "ro");
	expect_fd(ap, 2, O_WRONLY, O_APPEND, 0, "append");
	expect_fd(shared, 100, O_RDWR, 0, 0, "shared with child");
	expect_fd(devnull, 0, O_WRONLY, O_NONBLOCK, 0, "/dev/null");
	/* dup() shares the offset. */
	ZCHECK(lseek(dupfd, 4321, SEEK_SET) == 4321 && lseek(rw, 0, SEEK_CUR) == 4321,
	       "dup no longer shares the offset");
	char buf[RW_LEN];
	ZCHECK(pread(rw, buf, RW_LEN, 0) == RW_LEN && memcmp(buf, data, RW_LEN) == 0, "rw contents");
	ZCHECK(read(ro, buf, 100) == 100 && memcmp(buf, data + 777, 100) == 0, "ro read at offset");
	/* O_APPEND: the write lands at the end, wherever the offset was. */
	ZCHECK(write(ap, "line-2\n", 7) == 7, "append write");
	ZCHECK(pread(open(p_ap, O_RDONLY), buf, 64, 0) == 14 && memcmp(buf, "line-1\nline-2\n", 14) == 0,
	       "append file contents");
	/* The child's read moves the offset we share. */
	ZCHECK(write(go[1], "g", 1) == 1, "write go");
	int st = zdtm_wait_child(child, 30000);
	ZCHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status 0x%x", st);
	ZCHECK(lseek(shared, 0, SEEK_CUR) == 150, "offset shared with the child is %lld",
	       (long long)lseek(shared, 0, SEEK_CUR));
	struct stat now;
	ZCHECK(fstat(dir, &now) == 0 && now.st_ino == dir_st.st_ino && now.st_dev == dir_st.st_dev,
	       "directory fd points elsewhere");
	ZCHECK(faccessat(dir, "rw.bin", F_OK, 0) == 0, "directory fd lookup");
	ZCHECK(write(devnull, buf, 10) == 10, "/dev/null write");
	ZCHECK(read(urandom, buf, 16) == 16, "/dev/urandom read");
	zdtm_pass();
}
