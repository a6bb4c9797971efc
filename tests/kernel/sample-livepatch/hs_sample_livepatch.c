// SPDX-License-Identifier: GPL-2.0
/*
 * hotsplice sample livepatch: replaces version_proc_show() (fs/proc/version.c),
 * the seq_file show routine behind /proc/version, so that reading
 * /proc/version reveals whether the patch is active.
 *
 * Why this function: it is a plain C function that is only ever reached
 * through a function pointer (proc_create_single -> single_open), so the
 * compiler cannot inline it or clone it (no .isra/.constprop suffix); it is
 * compiled with -mfentry like all of fs/proc, so it has the ftrace call site
 * livepatch redirects; it is static, so it is found by name through kallsyms
 * (CONFIG_KALLSYMS lists static text symbols); and its effect is visible to
 * any process with `cat /proc/version`.
 *
 * The replacement must not sleep in a way the consistency model cares about;
 * it only formats into the seq_file like the original does.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>
#include <linux/utsname.h>

#define HS_MARKER "[hotsplice-sample-livepatch]"

/* New implementation of version_proc_show(); same signature as the original. */
static int hs_version_proc_show(struct seq_file *m, void *v)
{
	struct new_utsname *uts = utsname();

	seq_printf(m, "%s version %s %s %s\n",
		   uts->sysname, uts->release, HS_MARKER, uts->version);
	return 0;
}

static struct klp_func hs_funcs[] = {
	{
		.old_name = "version_proc_show",
		.new_func = hs_version_proc_show,
	},
	{ }
};

static struct klp_object hs_objs[] = {
	{
		/* .name == NULL: the function lives in vmlinux */
		.funcs = hs_funcs,
	},
	{ }
};

static struct klp_patch hs_patch = {
	.mod = THIS_MODULE,
	.objs = hs_objs,
};

static int __init hs_livepatch_init(void)
{
	pr_info("enabling livepatch of version_proc_show\n");
	return klp_enable_patch(&hs_patch);
}

static void __exit hs_livepatch_exit(void)
{
	/* Nothing to do: the patch must already be disabled via sysfs. */
	pr_info("unloaded\n");
}

module_init(hs_livepatch_init);
module_exit(hs_livepatch_exit);
MODULE_LICENSE("GPL");
MODULE_AUTHOR("hotsplice");
MODULE_DESCRIPTION("hotsplice sample livepatch: marks /proc/version");
MODULE_INFO(livepatch, "Y");
