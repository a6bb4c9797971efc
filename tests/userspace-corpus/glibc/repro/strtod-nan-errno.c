/* glibc BZ #32045: strtod set errno to ERANGE when a NaN's payload,
 * "nan(...)", overflowed unsigned long long. Prints errno=34 before the
 * fix, errno=0 after. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(void)
{
	for (;;) {
		char *end;
		errno = 0;
		double d = strtod("nan(0x123456789abcdef0123456789abcdef)", &end);
		int e = errno;
		printf("errno=%d%s\n", e, d == d || *end ? " (not a NaN)" : "");
		fflush(stdout);
		usleep(20000);
	}
}
