/* A tiny "server" with a bug: check_length() (request.c) accepts a request
 * one byte too long (an off-by-one, the classic overflow). Every 300 ms it
 * prints what it decides for a 17-byte request into a 16-byte buffer. */
#include <stdio.h>
#include <unistd.h>
#include "request.h"

int main(void)
{
	volatile size_t request = BUF_SIZE + 1;
	for (unsigned long n = 1;; n++) {
		printf("[pid %d] request #%lu of %zu bytes: %s\n", getpid(), n,
		       (size_t)request, check_length(request) ? "ACCEPTED (overflow!)" : "rejected");
		fflush(stdout);
		usleep(300000);
	}
}
