// SPDX-License-Identifier: GPL-2.0
/*
 * procfuzz bug zoo: injects ONE known-shape /proc dentry bug into a stock kernel, so that the
 * differential fuzzer can be shown to catch it.  Loaded by the guest agent (`C` frame
 * `zoo <bug>`) with `bug=<name>`; never unloaded (the VM is thrown away).
 *
 * Bugs:
 *   stale_pid     pid_revalidate() answers "valid" even when the task is gone, and the release
 *                 of a pid (proc_flush_pid) no longer invalidates its /proc dentries: a reaped
 *                 pid's cached /proc/<pid> dentry stays usable (lstat says it is a directory).
 *   stale_sysctl  proc_sys_revalidate() and proc_sys_compare() accept a dentry of an
 *                 unregistered sysctl table, and unregistering a table no longer invalidates
 *                 its dentries: a cached
 *                 dentry outlives its table (e.g. /proc/sys/net/ipv4/conf/<dev> after link_del
 *                 and a re-add of the same name answers ENOENT from the old, dead table).
 *   leak_pidns    every readdir of a proc mount's root (proc_pid_readdir) takes a reference on
 *                 the mount's pid namespace that is never dropped: the namespace outlives its
 *                 last task and mount, and the pid_namespace slab count grows run after run
 *                 (for the leak oracle, fuzz/leaks.py).
 *
 * Every probe only changes a return value or an argument, or takes a reference; nothing is
 * freed early, so an injected bug changes answers or leaks, not memory safety (the stale
 * objects keep their references).
 */
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/kallsyms.h>
#include <linux/module.h>
#include <linux/pid.h>
#include <linux/pid_namespace.h>
#include <linux/proc_fs.h>
#include <linux/fs.h>
#include <linux/ptrace.h>
#include <linux/string.h>
#include <linux/namei.h>

static char *bug = "";
module_param(bug, charp, 0444);
MODULE_PARM_DESC(bug, "the bug to inject: stale_pid | stale_sysctl | leak_pidns");

/* ---- common: force a d_revalidate-style return value from 0 to 1 ---------------------------- */

static int force_valid_ret(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	if (regs_return_value(regs) == 0)
		regs_set_return_value(regs, 1);
	return 0;
}

/* ---- stale_pid ------------------------------------------------------------------------------ */

/* An empty struct pid: proc_flush_pid(&empty_pid) walks an empty inode list and does nothing.
 * The real pid keeps its inodes listed; proc_evict_inode unlists them later as usual. */
static struct pid empty_pid;

static int flush_pid_pre(struct kprobe *p, struct pt_regs *regs)
{
	regs->di = (unsigned long)&empty_pid;
	return 0;
}

static struct kprobe flush_pid_probe = {
	.symbol_name = "proc_flush_pid",
	.pre_handler = flush_pid_pre,
};

static struct kretprobe pid_revalidate_probe = {
	.kp.symbol_name = "pid_revalidate",
	.handler = force_valid_ret,
	.maxactive = 64,
};

/* ---- stale_sysctl --------------------------------------------------------------------------- */

static struct hlist_head empty_inodes;

/* proc_invalidate_siblings_dcache(inodes, lock) is shared by pid release and sysctl
 * unregistering; only the sysctl callers (anything but proc_flush_pid) get an empty list. */
static int siblings_pre(struct kprobe *p, struct pt_regs *regs)
{
	char caller[KSYM_SYMBOL_LEN];

	sprint_symbol_no_offset(caller, *(unsigned long *)regs->sp);
	if (strcmp(caller, "proc_flush_pid") != 0)
		regs->di = (unsigned long)&empty_inodes;
	return 0;
}

static struct kprobe siblings_probe = {
	.symbol_name = "proc_invalidate_siblings_dcache",
	.pre_handler = siblings_pre,
};

/* proc_sys_revalidate returns -ECHILD in RCU walk; force_valid_ret leaves that alone. */
static struct kretprobe sys_revalidate_probe = {
	.kp.symbol_name = "proc_sys_revalidate",
	.handler = force_valid_ret,
	.maxactive = 64,
};

/* d_lookup also consults proc_sys_compare, which refuses a dentry of an unregistered table:
 * treat an exact name match as a match again. */
struct compare_data { int same_name; };

static int sys_compare_entry(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct compare_data *d = (struct compare_data *)ri->data;
	unsigned int len = regs->si;
	const char *str = (const char *)regs->dx;
	const struct qstr *name = (const struct qstr *)regs->cx;

	d->same_name = name->len == len && memcmp(name->name, str, len) == 0;
	return 0;
}

static int sys_compare_ret(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct compare_data *d = (struct compare_data *)ri->data;

	if (d->same_name && regs_return_value(regs) != 0)
		regs_set_return_value(regs, 0);
	return 0;
}

static struct kretprobe sys_compare_probe = {
	.kp.symbol_name = "proc_sys_compare",
	.entry_handler = sys_compare_entry,
	.handler = sys_compare_ret,
	.data_size = sizeof(struct compare_data),
	.maxactive = 64,
};

/* ---- leak_pidns ---------------------------------------------------------------------------- */

/* proc_pid_readdir(struct file *file, struct dir_context *ctx) */
static int pid_readdir_pre(struct kprobe *p, struct pt_regs *regs)
{
	struct file *file = (struct file *)regs->di;

	get_pid_ns(proc_pid_ns(file_inode(file)->i_sb));
	return 0;
}

static struct kprobe pid_readdir_probe = {
	.symbol_name = "proc_pid_readdir",
	.pre_handler = pid_readdir_pre,
};

/* ---- table ---------------------------------------------------------------------------------- */

struct zoo_bug {
	const char *name;
	struct kprobe *kp[2];
	struct kretprobe *rp[2];
};

static const struct zoo_bug bugs[] = {
	{ "stale_pid", { &flush_pid_probe }, { &pid_revalidate_probe } },
	{ "stale_sysctl", { &siblings_probe }, { &sys_revalidate_probe, &sys_compare_probe } },
	{ "leak_pidns", { &pid_readdir_probe }, { NULL } },
};

static const struct zoo_bug *active;

static void unregister_all(const struct zoo_bug *b)
{
	for (int i = 0; i < 2; i++) {
		if (b->kp[i] && b->kp[i]->addr)
			unregister_kprobe(b->kp[i]);
		if (b->rp[i] && b->rp[i]->kp.addr)
			unregister_kretprobe(b->rp[i]);
	}
}

static int __init zoo_init(void)
{
	int err = 0;

	spin_lock_init(&empty_pid.lock);
	INIT_HLIST_HEAD(&empty_pid.inodes);
	INIT_HLIST_HEAD(&empty_inodes);
	for (size_t i = 0; i < ARRAY_SIZE(bugs); i++)
		if (strcmp(bug, bugs[i].name) == 0)
			active = &bugs[i];
	if (!active) {
		pr_err("procfuzz-zoo: unknown bug '%s'\n", bug);
		return -EINVAL;
	}
	/* Revalidate first: until the flush is neutralised too the bug is merely invisible. */
	for (int i = 0; i < 2 && !err; i++)
		if (active->rp[i])
			err = register_kretprobe(active->rp[i]);
	for (int i = 0; i < 2 && !err; i++)
		if (active->kp[i])
			err = register_kprobe(active->kp[i]);
	if (err) {
		pr_err("procfuzz-zoo: %s: registering a probe failed: %d\n", bug, err);
		unregister_all(active);
		return err;
	}
	pr_info("procfuzz-zoo: injected %s\n", bug);
	return 0;
}

static void __exit zoo_exit(void)
{
	unregister_all(active);
}

module_init(zoo_init);
module_exit(zoo_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("procfuzz bug zoo: injected /proc dentry bugs");
