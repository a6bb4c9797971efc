/* glibc BZ #30635: glob recursed once for every trailing '/' of the
 * pattern's directory part, so a pattern with many slashes overflowed the
 * stack. Each round runs glob in a child whose stack is limited to 1 MiB
 * and prints glob=crash before the fix, glob=ok after. */
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define SLASHES 100000

static char pattern[SLASHES + 8];

static const char *try_glob(void)
{
	pid_t pid = fork();
	int status;

	if (pid < 0)
		return "fork-failed";
	if (pid == 0) {
		struct rlimit rl = { 1 << 20, 1 << 20 };
		glob_t g;

		setrlimit(RLIMIT_STACK, &rl);
		int r = glob(pattern, 0, NULL, &g);
		_exit(r == 0 || r == GLOB_NOMATCH ? 0 : 2);
	}
	if (waitpid(pid, &status, 0) != pid)
		return "wait-failed";
	if (WIFSIGNALED(status))
		return "crash";
	return WEXITSTATUS(status) == 0 ? "ok" : "error";
}

int main(void)
{
	/* "/*" followed by many slashes: the first component matches. */
	strcpy(pattern, "/*");
	memset(pattern + 2, '/', SLASHES);
	pattern[SLASHES + 2] = '\0';
	for (;;) {
		printf("glob=%s\n", try_glob());
		fflush(stdout);
		usleep(20000);
	}
}
