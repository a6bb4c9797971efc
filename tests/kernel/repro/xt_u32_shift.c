// SPDX-License-Identifier: Apache-2.0 OR MIT
// Reproducer for tests/kernel/corpus/11-net-xt_u32.diff
// (net/netfilter/xt_u32.c: u32_mt_checkentry): a u32 match whose location
// shifts by 32 or more bits is undefined behaviour in u32_match_it; the
// fixed kernel refuses such a rule when it is installed, the unfixed one
// accepts it.
//
// Installs, as iptables would (IPT_SO_SET_REPLACE on the filter table), a
// table with one INPUT rule `-m u32 --u32 "0>>40=0:0xffffffff"`-like (the
// second location shifts left by 40), and prints "accepted" or "refused
// (errno name)". Then puts back an empty table (policies only). Needs the
// ip_tables, iptable_filter and xt_u32 modules. Exits 1 on an unexpected
// error.
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/netfilter_ipv4/ip_tables.h>
#include <linux/netfilter/xt_u32.h>

struct standard {
	struct ipt_entry e;
	struct xt_standard_target t;
};

struct error {
	struct ipt_entry e;
	struct xt_error_target t;
};

struct u32rule {
	struct ipt_entry e;
	struct xt_entry_match m;
	struct xt_u32 u;
	struct xt_standard_target t;
} __attribute__((aligned(8)));

static void standard(struct standard *s)
{
	memset(s, 0, sizeof(*s));
	s->e.target_offset = sizeof(s->e);
	s->e.next_offset = sizeof(*s);
	s->t.target.u.user.target_size = XT_ALIGN(sizeof(s->t));
	s->t.verdict = -NF_ACCEPT - 1;
}

// Replace the filter table with [rule?] + three ACCEPT policies + ERROR.
static int replace(int fd, int with_rule, unsigned num_counters)
{
	size_t rule = with_rule ? XT_ALIGN(sizeof(struct u32rule)) : 0;
	size_t size = rule + 3 * sizeof(struct standard) + sizeof(struct error);
	struct ipt_replace *r = calloc(1, sizeof(*r) + size);
	struct xt_counters *counters = calloc(num_counters + 1, sizeof(*counters));
	if (!r || !counters)
		return -ENOMEM;
	strcpy(r->name, "filter");
	r->valid_hooks = (1 << NF_INET_LOCAL_IN) | (1 << NF_INET_FORWARD) | (1 << NF_INET_LOCAL_OUT);
	r->num_entries = 4 + !!with_rule;
	r->size = size;
	r->num_counters = num_counters;
	r->counters = counters;
	char *p = (char *)r->entries;
	if (with_rule) {
		struct u32rule *u = (struct u32rule *)p;
		u->e.target_offset = offsetof(struct u32rule, t);
		u->e.next_offset = rule;
		u->m.u.user.match_size = XT_ALIGN(sizeof(u->m) + sizeof(u->u));
		strcpy(u->m.u.user.name, "u32");
		u->u.ntests = 1;
		u->u.tests[0].nnums = 2;
		u->u.tests[0].location[0].number = 0;
		u->u.tests[0].location[1].nextop = XT_U32_LEFTSH;
		u->u.tests[0].location[1].number = 40;
		u->u.tests[0].nvalues = 1;
		u->u.tests[0].value[0].min = 0;
		u->u.tests[0].value[0].max = 0xffffffff;
		u->t.target.u.user.target_size = XT_ALIGN(sizeof(u->t));
		u->t.verdict = -NF_ACCEPT - 1;
	}
	unsigned off = 0;
	r->hook_entry[NF_INET_LOCAL_IN] = 0;
	off = rule;
	r->underflow[NF_INET_LOCAL_IN] = off;
	for (int h = 0; h < 3; h++) {
		standard((struct standard *)(p + off));
		if (h == 1)
			r->hook_entry[NF_INET_FORWARD] = r->underflow[NF_INET_FORWARD] = off;
		if (h == 2)
			r->hook_entry[NF_INET_LOCAL_OUT] = r->underflow[NF_INET_LOCAL_OUT] = off;
		off += sizeof(struct standard);
	}
	struct error *e = (struct error *)(p + off);
	e->e.target_offset = sizeof(e->e);
	e->e.next_offset = sizeof(*e);
	e->t.target.u.user.target_size = XT_ALIGN(sizeof(e->t));
	strcpy(e->t.target.u.user.name, XT_ERROR_TARGET);
	strcpy(e->t.errorname, XT_ERROR_TARGET);
	int rc = setsockopt(fd, IPPROTO_IP, IPT_SO_SET_REPLACE, r, sizeof(*r) + size) ? -errno : 0;
	free(r);
	free(counters);
	return rc;
}

static int entries(int fd, unsigned *n)
{
	struct ipt_getinfo info = { .name = "filter" };
	socklen_t len = sizeof(info);
	if (getsockopt(fd, IPPROTO_IP, IPT_SO_GET_INFO, &info, &len))
		return -errno;
	*n = info.num_entries;
	return 0;
}

int main(void)
{
	int fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
	unsigned n;
	if (fd < 0 || entries(fd, &n)) {
		perror("the filter table (ip_tables, iptable_filter)");
		return 1;
	}
	int rc = replace(fd, 1, n);
	if (rc == 0)
		printf("accepted\n");
	else if (rc == -EINVAL)
		printf("refused (EINVAL)\n");
	else {
		fprintf(stderr, "IPT_SO_SET_REPLACE: %s\n", strerror(-rc));
		return 1;
	}
	if (entries(fd, &n) || replace(fd, 0, n)) {
		perror("putting back the empty table");
		return 1;
	}
	close(fd);
	return 0;
}
