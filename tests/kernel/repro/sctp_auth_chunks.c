// SPDX-License-Identifier: Apache-2.0 OR MIT
// Reproducer for tests/kernel/corpus/05-net-sctp_auth.diff (CVE-2026-68300,
// net/sctp/auth.c: sctp_auth_ep_add_chunkid): an endpoint's list of chunk
// types to authenticate must hold at most SCTP_AUTH_MAX_CHUNKS entries, the
// size of the association's copy; the unfixed kernel accepts
// SCTP_NUM_CHUNK_TYPES (4 more), which a later association overflows.
//
// Prints "accepted N": how many distinct chunk types SCTP_AUTH_CHUNK took
// before refusing one (EINVAL). Needs the sctp module and
// net.sctp.auth_enable=1 (set here). Exits 1 on an unexpected error.
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/sctp.h>

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

int main(void)
{
	int fd = open("/proc/sys/net/sctp/auth_enable", O_WRONLY);
	if (fd < 0 || write(fd, "1\n", 2) != 2) {
		perror("net.sctp.auth_enable");
		return 1;
	}
	close(fd);
	int s = socket(AF_INET, SOCK_SEQPACKET, IPPROTO_SCTP);
	if (s < 0) {
		perror("socket(IPPROTO_SCTP)");
		return 1;
	}
	int accepted = 0;
	// Chunk types the option refuses anyway: INIT, INIT_ACK,
	// SHUTDOWN_COMPLETE, AUTH.
	for (int c = 0; c < 256; c++) {
		if (c == 1 || c == 2 || c == 14 || c == 15)
			continue;
		struct sctp_authchunk a = { .sauth_chunk = (unsigned char)c };
		if (setsockopt(s, IPPROTO_SCTP, SCTP_AUTH_CHUNK, &a, sizeof(a)) == 0) {
			accepted++;
			continue;
		}
		if (errno != EINVAL) {
			perror("setsockopt(SCTP_AUTH_CHUNK)");
			return 1;
		}
		break;
	}
	printf("accepted %d\n", accepted);
	close(s);
	return 0;
}
