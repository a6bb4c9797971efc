/* glibc BZ #28038: getline on a stream already at end of file returns -1
 * without storing a terminating NUL in the buffer (POSIX requires one).
 * Prints nul=0 before the fix, nul=1 after. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int nul_stored(void)
{
	char *line = malloc(120);
	size_t n = 120;
	FILE *f = fmemopen((char *)"", 0, "r");
	int ok;

	if (line == NULL || f == NULL)
		return -1;
	memset(line, 'x', n);
	ok = getline(&line, &n, f) == -1 && line[0] == '\0';
	fclose(f);
	free(line);
	return ok;
}

int main(void)
{
	for (;;) {
		printf("nul=%d\n", nul_stored());
		fflush(stdout);
		usleep(20000);
	}
}
