// SPDX-License-Identifier: Apache-2.0 OR MIT
// Exercises tests/kernel/corpus/33-lib-assoc_array.diff
// (lib/assoc_array.c: assoc_array_walk, static, which the fix makes trim a
// shortcut's segments at the right level): a keyring is an assoc_array, and
// adding a key to it (add_key(2): assoc_array_insert) and finding one
// (keyctl(KEYCTL_SEARCH): assoc_array_find) walk the array through
// assoc_array_walk. Creates a keyring, adds 500 keys (enough for the
// array's tree to grow nodes and shortcuts), finds each of them and one
// that is not there, and prints "keys 500 found 500 missing-not-found".
// Exits 1 on an unexpected result.
#include <errno.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#define KEY_SPEC_PROCESS_KEYRING -2
#define KEYCTL_SEARCH 10

static long add_key(const char *type, const char *desc, const void *data, size_t len, long ring)
{
	return syscall(SYS_add_key, type, desc, data, len, ring);
}

int main(void)
{
	long ring = add_key("keyring", "hs-repro", NULL, 0, KEY_SPEC_PROCESS_KEYRING);
	if (ring < 0) {
		perror("add_key keyring");
		return 1;
	}
	char desc[32];
	int added = 0, found = 0;
	for (int i = 0; i < 500; i++) {
		snprintf(desc, sizeof desc, "hs:%d", i);
		if (add_key("user", desc, "x", 1, ring) >= 0)
			added++;
		else
			perror("add_key user");
	}
	for (int i = 0; i < 500; i++) {
		snprintf(desc, sizeof desc, "hs:%d", i);
		if (syscall(SYS_keyctl, KEYCTL_SEARCH, ring, "user", desc, 0) >= 0)
			found++;
	}
	long missing = syscall(SYS_keyctl, KEYCTL_SEARCH, ring, "user", "hs:none", 0);
	int ok = missing < 0 && errno == ENOKEY;
	printf("keys %d found %d %s\n", added, found, ok ? "missing-not-found" : "missing-found");
	return added == 500 && found == 500 && ok ? 0 : 1;
}
