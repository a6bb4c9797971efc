/* glibc BZ #30220: strtod dropped the least significant bit of some
 * subnormal results. "0x30000002222225p-1077" rounds to nearest as
 * 0x1.8000001111114p-1024 (upstream's tst-strtod-round data); prints
 * rounded=wrong before the fix, rounded=right after. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(void)
{
	for (;;) {
		volatile double want = 0x1.8000001111114p-1024;
		double got = strtod("0x30000002222225p-1077", NULL);
		printf("rounded=%s\n", got == want ? "right" : "wrong");
		fflush(stdout);
		usleep(20000);
	}
}
