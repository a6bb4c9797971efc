// SPDX-License-Identifier: GPL-2.0
/*
 * hotsplice test livepatch touching two objects in one update:
 *  - vmlinux: version_proc_show() (/proc/version) gets the marker
 *    "[hotsplice-combo]";
 *  - the ext4 module: ext4_show_options(), the super_operations
 *    ->show_options of ext4 that adds the per-filesystem options to each
 *    ext4 line of /proc/mounts, prints the option "hotsplice_combo".
 *
 * ext4_show_options() is static, only reached through sb->s_op, traceable
 * (listed in available_filter_functions once ext4 is loaded). The original
 * delegates to _ext4_show_options(), which a hand-written module cannot call
 * (static, in another module; `hotsplice create --kernel` would reach it
 * through a klp relocation); so the replacement prints just the marker: the
 * options ext4 prints by default on a default-made filesystem mounted with
 * no options are none, so the marker is the whole difference.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/dcache.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>
#include <linux/utsname.h>

#ifndef HS_BUILD_ID
#error "HS_BUILD_ID (the target kernel's GNU build-id) must be defined"
#endif

static int hs_combo_version_proc_show(struct seq_file *m, void *v)
{
	const struct new_utsname *u = utsname();

	seq_printf(m, "%s version %s [hotsplice-combo] %s\n",
		   u->sysname, u->release, u->version);
	return 0;
}

static int hs_combo_ext4_show_options(struct seq_file *seq, struct dentry *root)
{
	seq_puts(seq, ",hotsplice_combo");
	return 0;
}

static struct klp_func hs_combo_vmlinux_funcs[] = {
	{ .old_name = "version_proc_show", .new_func = hs_combo_version_proc_show },
	{ }
};

static struct klp_func hs_combo_ext4_funcs[] = {
	{ .old_name = "ext4_show_options", .new_func = hs_combo_ext4_show_options },
	{ }
};

static struct klp_object hs_combo_objs[] = {
	{ .name = NULL /* vmlinux */, .funcs = hs_combo_vmlinux_funcs },
	{ .name = "ext4", .funcs = hs_combo_ext4_funcs },
	{ }
};

static struct klp_patch hs_combo_patch = {
	.mod = THIS_MODULE,
	.objs = hs_combo_objs,
};

static int __init hs_combo_init(void)
{
	return klp_enable_patch(&hs_combo_patch);
}

static void __exit hs_combo_exit(void)
{
}

module_init(hs_combo_init);
module_exit(hs_combo_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("hotsplice test update: /proc/version [hotsplice-combo] and ext4 mount option hotsplice_combo");
MODULE_INFO(livepatch, "Y");
MODULE_INFO(hotsplice_id, "hscombo1");
MODULE_INFO(hotsplice_build_id, HS_BUILD_ID);
MODULE_INFO(hotsplice_release, HS_RELEASE);
MODULE_INFO(hotsplice_effective, HS_RELEASE ".hscombo");
