// SPDX-License-Identifier: Apache-2.0 OR MIT
// Exercises tests/kernel/corpus/32-lib-rhashtable.diff
// (lib/rhashtable.c: rhashtable_walk_start_check, which the fix makes
// clear the walker's position when the table changed under it): reading
// /proc/net/netlink walks the netlink sockets' rhashtable through
// rhashtable_walk_start_check, once per read(2) of the seq file. Opens 64
// bound netlink sockets (so the walk spans several reads), reads the file with
// small reads, and prints "sockets N" (lines after the header; at least
// the 64). Exits 1 on an error.
#include <fcntl.h>
#include <linux/netlink.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void)
{
	int fds[64];
	for (int i = 0; i < 64; i++) {
		fds[i] = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
		if (fds[i] < 0) {
			perror("socket");
			return 1;
		}
		/* Bound (port id chosen by the kernel): only then in the table. */
		struct sockaddr_nl a = { .nl_family = AF_NETLINK };
		if (bind(fds[i], (struct sockaddr *)&a, sizeof a) < 0) {
			perror("bind");
			return 1;
		}
	}
	int f = open("/proc/net/netlink", O_RDONLY);
	if (f < 0) {
		perror("/proc/net/netlink");
		return 1;
	}
	char buf[256];
	long lines = 0;
	ssize_t n;
	while ((n = read(f, buf, sizeof buf)) > 0)
		for (ssize_t i = 0; i < n; i++)
			lines += buf[i] == '\n';
	if (n < 0) {
		perror("read");
		return 1;
	}
	close(f);
	for (int i = 0; i < 64; i++)
		close(fds[i]);
	printf("sockets %s\n", lines - 1 >= 64 ? ">=64" : "too few");
	return lines - 1 >= 64 ? 0 : 1;
}
