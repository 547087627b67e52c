/*
 * Process and thread names: PR_SET_NAME on the main thread and a different name on a second
 * thread (pthread_setname_np). After restore `comm` of each is unchanged (ps and top show it).
 */
#include "zdtm.h"
#include <pthread.h>
#include <sys/prctl.h>

static volatile int stop;
static char thread_name[16];
static volatile int named_set;

static void *named(void *arg)
{
	(void)arg;
	prctl(PR_SET_NAME, "zdtm-worker", 0, 0, 0);
	named_set = 1;
	while (!stop)
		zdtm_msleep(5);
	prctl(PR_GET_NAME, thread_name, 0, 0, 0);
	return NULL;
}

int main(int argc, char **argv)
{
	zdtm_start(argc, argv);
	ZCHECK(prctl(PR_SET_NAME, "zdtm-named", 0, 0, 0) == 0, "PR_SET_NAME");
	pthread_t th;
	ZCHECK(pthread_create(&th, NULL, named, NULL) == 0, "pthread_create");
	/* Ready once the thread has named itself: otherwise a checkpoint taken before (a slow
	 * machine) would not carry the name and the check below would prove nothing. */
	while (!named_set)
		zdtm_msleep(1);
	zdtm_ready();
	zdtm_wait_trigger();
	char name[17] = { 0 };
	ZCHECK(prctl(PR_GET_NAME, name, 0, 0, 0) == 0 && strcmp(name, "zdtm-named") == 0,
	       "process name is %s", name);
	stop = 1;
	ZCHECK(pthread_join(th, NULL) == 0, "join");
	ZCHECK(strcmp(thread_name, "zdtm-worker") == 0, "thread name is %s", thread_name);
	zdtm_pass();
}
