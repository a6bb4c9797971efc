#include "request.h"

/* Decides whether a request fits the buffer. */
int check_length(size_t len)
{
	return len <= BUF_SIZE + 1; /* BUG: should be len <= BUF_SIZE */
}
