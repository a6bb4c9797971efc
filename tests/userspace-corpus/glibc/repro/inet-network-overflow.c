/* glibc BZ #32573: inet_network let a part of the address overflow, so
 * "4294967296" (2^32) parsed as network 0 instead of being rejected.
 * Prints network=0x0 before the fix, network=0xffffffff (INADDR_NONE)
 * after. */
#include <arpa/inet.h>
#include <stdio.h>
#include <unistd.h>

int main(void)
{
	for (;;) {
		printf("network=%#x\n", (unsigned)inet_network("4294967296"));
		fflush(stdout);
		usleep(20000);
	}
}
