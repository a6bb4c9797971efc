// SPDX-License-Identifier: GPL-2.0
/*
 * hotsplice test livepatch 2 of 2: replaces version_proc_show()
 * (fs/proc/version.c, the show routine of /proc/version) with one that puts
 * the marker "[hotsplice-lp2]" after the release. Patch 2 stacks on patch 1:
 * both replace the same function, the one applied last wins.
 *
 * Written as `hotsplice create --kernel` output would look: a livepatch
 * module with the hotsplice_* modinfo that `hotsplice kernel wrap` reads.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>
#include <linux/utsname.h>

#ifndef HS_BUILD_ID
#error "HS_BUILD_ID (the target kernel's GNU build-id) must be defined"
#endif

static int hs_lp2_version_proc_show(struct seq_file *m, void *v)
{
	const struct new_utsname *u = utsname();

	seq_printf(m, "%s version %s [hotsplice-lp2] %s\n",
		   u->sysname, u->release, u->version);
	return 0;
}

static struct klp_func hs_lp2_funcs[] = {
	{ .old_name = "version_proc_show", .new_func = hs_lp2_version_proc_show },
	{ }
};

static struct klp_object hs_lp2_objs[] = {
	{ .name = NULL /* vmlinux */, .funcs = hs_lp2_funcs },
	{ }
};

static struct klp_patch hs_lp2_patch = {
	.mod = THIS_MODULE,
	.objs = hs_lp2_objs,
};

static int __init hs_lp2_init(void)
{
	return klp_enable_patch(&hs_lp2_patch);
}

static void __exit hs_lp2_exit(void)
{
}

module_init(hs_lp2_init);
module_exit(hs_lp2_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("hotsplice test update 2: marks /proc/version with [hotsplice-lp2]");
MODULE_INFO(livepatch, "Y");
MODULE_INFO(hotsplice_id, "hsver002");
MODULE_INFO(hotsplice_build_id, HS_BUILD_ID);
MODULE_INFO(hotsplice_release, HS_RELEASE);
MODULE_INFO(hotsplice_effective, HS_RELEASE ".hs2");
