// SPDX-License-Identifier: GPL-2.0
/*
 * procfuzz bug zoo: injects ONE known-shape /proc dentry bug into a stock kernel, so that the
 * differential fuzzer can be shown to catch it.  Loaded by the guest agent (`C` frame
 * `zoo <bug>`) with `bug=<name>`; procfuzz never unloads it (the VM is thrown away), `rmmod zoo`
 * undoes the bug.
 *
 * Bugs:
 *   stale_pid     pid_revalidate() answers "valid" even when the task is gone, and the release
 *                 of a pid (proc_flush_pid) no longer invalidates its /proc dentries: a reaped
 *                 pid's cached /proc/<pid> dentry stays usable (lstat says it is a directory).
 *   stale_sysctl  unregistering a sysctl table no longer invalidates its dentries (before the
 *                 2020 series proc_sys_prune_dcache only pruned them): a dentry in use, a cwd
 *                 or an open file's, stays hashed after its table is gone, so readlink of
 *                 /proc/<pid>/cwd or fd/<n> lacks " (deleted)".
 *                 Lookups still drop it (proc_sys_revalidate, proc_sys_compare).
 *   stale_tid     like stale_pid, but only for a thread's /proc/<pid>/task/<tid> dentry: its
 *                 revalidation says "valid" after the thread exits, and the thread's own release
 *                 no longer flushes its dentries (a thread group leader and /proc/<tid> are as usual).
 *   sysctl_wrong_netns
 *                 proc_sys_compare() matches any cached /proc/sys dentry of the same name, also
 *                 one of another network namespace's tables: a reader sees the netns of whoever
 *                 looked the name up first (e.g. net/ipv4/conf/<dev> of a device it does not have).
 *   hidepid_wrong_mount
 *                 readdir of a proc root filters tasks as if the mount had hidepid=off, as if
 *                 the options of another proc mount of the same pid namespace applied (before
 *                 5.8 hidepid lived in the pid namespace, shared by all its mounts): a
 *                 hidepid=invisible|noaccess mount lists other users' processes.
 *   leak_pidns    every readdir of a proc mount's root (proc_pid_readdir) takes a reference on
 *                 the mount's pid namespace that is never dropped: the namespace outlives its
 *                 last task and mount, and the pid_namespace slab count grows run after run
 *                 (for the leak oracle, fuzz/leaks.py).
 *   leak_dentry   every successful lookup of /proc/<pid> on a proc mount made inside a pid
 *                 namespace (not the initial one) takes a dentry reference that is never
 *                 dropped: at the task's release proc_flush_pid still unhashes the dentry
 *                 (lookups answer ENOENT as they should) but cannot free it, so the dentry,
 *                 its proc inode and its struct pid outlive the task, and the dentry and
 *                 proc_inode_cache slab counts grow run after run.  Like a leaked struct path
 *                 the reference keeps the superblock active, so unmounting does not trip over a
 *                 busy dentry.  The references are kept in a bounded list and dropped when the
 *                 module is unloaded (rmmod zoo): a leak for the kernel, a clean unload.
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
#include <linux/sched/signal.h>

static char *bug = "";
module_param(bug, charp, 0444);
MODULE_PARM_DESC(bug, "the bug to inject: stale_pid | stale_tid | stale_sysctl | sysctl_wrong_netns | "
		 "hidepid_wrong_mount | leak_pidns | leak_dentry");

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

/* ---- stale_tid ------------------------------------------------------------------------------ */

/* /proc/<pid>/task/<tid> of a thread other than the leader: parent "task", and a name that is
 * not the thread group's own pid (the grandparent's name). */
static bool is_thread_entry(const struct dentry *dentry)
{
	const struct dentry *parent = dentry->d_parent;

	return strcmp(parent->d_name.name, "task") == 0 &&
	       strcmp(dentry->d_name.name, parent->d_parent->d_name.name) != 0;
}

/* pid_revalidate(dentry, flags): decide at entry (the dentry is an argument), force at return. */
static int tid_revalidate_entry(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	*(bool *)ri->data = is_thread_entry((const struct dentry *)regs->di);
	return 0;
}

static int tid_revalidate_ret(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	return *(bool *)ri->data ? force_valid_ret(ri, regs) : 0;
}

static struct kretprobe tid_revalidate_probe = {
	.kp.symbol_name = "pid_revalidate",
	.entry_handler = tid_revalidate_entry,
	.handler = tid_revalidate_ret,
	.data_size = sizeof(bool),
	.maxactive = 64,
};

/* A thread that is not the leader is autoreaped: exit_notify calls release_task on itself, and
 * release_task calls proc_flush_pid(its own pid).  Only that flush is neutralised; a leader's
 * (released by its reaper, or by its last thread) still invalidates /proc/<pid>. */
static int flush_tid_pre(struct kprobe *p, struct pt_regs *regs)
{
	struct pid *pid = (struct pid *)regs->di;

	if (!thread_group_leader(current) && pid_nr(pid) == current->pid)
		regs->di = (unsigned long)&empty_pid;
	return 0;
}

static struct kprobe flush_tid_probe = {
	.symbol_name = "proc_flush_pid",
	.pre_handler = flush_tid_pre,
};

/* ---- stale_sysctl --------------------------------------------------------------------------- */

static struct hlist_head empty_inodes;

/* proc_invalidate_siblings_dcache(inodes, lock) is shared by pid release and sysctl
 * unregistering; only the sysctl callers get an empty list.  proc_flush_pid passes a struct
 * pid's own inodes and lock, sysctl &head->inodes and &sysctl_lock.  (The caller's name cannot
 * tell: proc_flush_pid tail-calls it, so the return address is release_task's.) */
static int siblings_pre(struct kprobe *p, struct pt_regs *regs)
{
	struct pid *pid = container_of((struct hlist_head *)regs->di, struct pid, inodes);

	if ((spinlock_t *)regs->si != &pid->lock)
		regs->di = (unsigned long)&empty_inodes;
	return 0;
}

static struct kprobe siblings_probe = {
	.symbol_name = "proc_invalidate_siblings_dcache",
	.pre_handler = siblings_pre,
};

/* ---- sysctl_wrong_netns ------------------------------------------------------------------- */

/* d_lookup consults proc_sys_compare, which refuses a dentry whose table the reader's network
 * namespace does not see (sysctl_is_seen): treat an exact name match as a match again. */
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

/* proc_sys_revalidate and the invalidation on unregistering are left alone, so a dead table's
 * dentry still goes; only a live table of another namespace leaks. */

/* ---- hidepid_wrong_mount ------------------------------------------------------------------- */

/* has_pid_permissions(fs_info, task, hide_pid_min) is inlined into its callers (it is not in
 * kallsyms of 6.1 nor 6.12).  Past the mount's hidepid and gid= tests its answer is that of
 * ptrace_may_access(task, PTRACE_MODE_READ_FSCREDS); for hidepid=off it is "allowed" before that.
 * So when proc_pid_readdir asks, answer "allowed": the root listing filters as if the mount
 * being read had hidepid=off (its other callers: lookup, getattr, permission, are untouched). */
static int ptrace_access_entry(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	char caller[KSYM_SYMBOL_LEN];

	sprint_symbol_no_offset(caller, *(unsigned long *)regs->sp);
	*(bool *)ri->data = strcmp(caller, "proc_pid_readdir") == 0;
	return 0;
}

static int ptrace_access_ret(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	if (*(bool *)ri->data)
		regs_set_return_value(regs, true);
	return 0;
}

static struct kretprobe ptrace_access_probe = {
	.kp.symbol_name = "ptrace_may_access",
	.entry_handler = ptrace_access_entry,
	.handler = ptrace_access_ret,
	.data_size = sizeof(bool),
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

/* ---- leak_dentry --------------------------------------------------------------------------- */

/* Bounded so that a long campaign cannot exhaust the guest's memory: 8192 pins of dentry, inode
 * and (mostly shared) superblock are a few MiB; past it the leak stops (said once on the console). */
#define LEAKED_MAX 8192

struct leaked_dentry {
	struct dentry *dentry;
	struct super_block *sb;     /* one s_active reference per entry */
};

static struct leaked_dentry leaked[LEAKED_MAX];
static unsigned int n_leaked;
static DEFINE_SPINLOCK(leaked_lock);

/* proc_pid_lookup(dentry, flags): the dentry is an argument, the outcome the return value. */
static int pid_lookup_entry(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	*(struct dentry **)ri->data = (struct dentry *)regs->di;
	return 0;
}

/* NULL: the dentry itself is now the positive /proc/<pid> dentry; the caller (the path walk)
 * holds a reference, so it cannot die under us.  The harness's own /proc (the initial pid
 * namespace) is left alone: only the programs' mounts leak, so the leak follows their ops. */
static int pid_lookup_ret(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct dentry *dentry = *(struct dentry **)ri->data;
	struct super_block *sb = dentry->d_sb;

	if (regs_return_value(regs) != 0 || d_really_is_negative(dentry) || proc_pid_ns(sb) == &init_pid_ns)
		return 0;
	spin_lock(&leaked_lock);
	/* The walk's mount keeps s_active above zero; the check is for form. */
	if (n_leaked < LEAKED_MAX && atomic_inc_not_zero(&sb->s_active))
		leaked[n_leaked++] = (struct leaked_dentry){ dget(dentry), sb };
	else if (n_leaked == LEAKED_MAX)
		pr_warn_once("procfuzz-zoo: leak_dentry: %d dentries pinned, no more\n", LEAKED_MAX);
	spin_unlock(&leaked_lock);
	return 0;
}

static struct kretprobe pid_lookup_probe = {
	.kp.symbol_name = "proc_pid_lookup",
	.entry_handler = pid_lookup_entry,
	.handler = pid_lookup_ret,
	.data_size = sizeof(struct dentry *),
	.maxactive = 64,
};

/* At unload, after the probes are gone: the dentry first, then the superblock it pinned (the
 * last s_active reference of an unmounted proc shuts it down, which needs its dentries unused). */
static void release_leaked(void)
{
	for (unsigned int i = 0; i < n_leaked; i++) {
		dput(leaked[i].dentry);
		deactivate_super(leaked[i].sb);
	}
	n_leaked = 0;
}

/* ---- crash bugs (defined at the end of the file, for the console parser's test logs) ------- */

static struct kretprobe bogus_lookup_probe, sysctl_length_probe;
static struct kprobe forward_unlock_probe, splice_probe;

/* ---- table ---------------------------------------------------------------------------------- */

struct zoo_bug {
	const char *name;
	struct kprobe *kp[2];
	struct kretprobe *rp[2];
};

static const struct zoo_bug bugs[] = {
	{ "stale_pid", { &flush_pid_probe }, { &pid_revalidate_probe } },
	{ "stale_tid", { &flush_tid_probe }, { &tid_revalidate_probe } },
	{ "stale_sysctl", { &siblings_probe }, { NULL } },
	{ "sysctl_wrong_netns", { NULL }, { &sys_compare_probe } },
	{ "hidepid_wrong_mount", { NULL }, { &ptrace_access_probe } },
	{ "leak_pidns", { &pid_readdir_probe }, { NULL } },
	{ "leak_dentry", { NULL }, { &pid_lookup_probe } },
	/* crash bugs: each makes the kernel report (oops, WARN, hung task), not a divergence */
	{ "crash_lookup_null", { NULL }, { &bogus_lookup_probe } },
	{ "crash_lookup_gpf", { NULL }, { &bogus_lookup_probe } },
	{ "warn_sysctl_length", { NULL }, { &sysctl_length_probe } },
	{ "hang_sysctl_rtnl", { &forward_unlock_probe }, { NULL } },
	{ "bug_splice_hashed", { &splice_probe }, { NULL } },
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
	release_leaked();
}

module_init(zoo_init);
module_exit(zoo_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("procfuzz bug zoo: injected /proc dentry bugs");

/* ==== crash bugs ==============================================================================
 * Unlike the bugs above these break memory safety or liveness on purpose: they give the console
 * parser (targets/console.py) real oops, WARN and hung-task reports from proc code.
 *   crash_lookup_null   proc_root_lookup() of a proc mount of another pid namespace than the
 *                       initial one answers the dentry pointer 0x30: step_into (namei)
 *                       dereferences it (BUG: kernel NULL pointer dereference).
 *   crash_lookup_gpf    the same with a non-canonical pointer (general protection fault).
 *   warn_sysctl_length  proc_dointvec(), read, reports a length past INT_MAX: copy_to_iter in
 *                       proc_sys_call_handler refuses it with a WARN (the read fails, EFAULT).
 *   hang_sysctl_rtnl    a write that changes net/ipv4/conf/<dev>/forwarding returns with the
 *                       rtnl mutex still held (devinet_sysctl_forward's rtnl_unlock is skipped):
 *                       the next rtnl user (e.g. link_add) waits forever (hung task).
 *   bug_splice_hashed   d_splice_alias() of a proc lookup below the root, in a proc mount of
 *                       another pid namespace than the initial one, is handed the parent dentry
 *                       (hashed, so its BUG_ON(!d_unhashed) fires before anything is changed).
 */
#include <linux/magic.h>

/* proc_root_lookup(dir, dentry, flags): decide at entry, replace a success (NULL) at return. */
static int foreign_root_entry(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	const struct inode *dir = (const struct inode *)regs->di;

	*(bool *)ri->data = proc_pid_ns(dir->i_sb) != &init_pid_ns;
	return 0;
}

/* Near NULL (a page fault at a small address), or LIST_POISON1 (non-canonical: a #GP). */
static int bogus_dentry_ret(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	unsigned long bogus = strcmp(bug, "crash_lookup_gpf") == 0 ? 0xdead000000000100UL : 0x30;

	if (*(bool *)ri->data && regs_return_value(regs) == 0)
		regs_set_return_value(regs, bogus);
	return 0;
}

static struct kretprobe bogus_lookup_probe = {
	.kp.symbol_name = "proc_root_lookup",
	.entry_handler = foreign_root_entry,
	.handler = bogus_dentry_ret,
	.data_size = sizeof(bool),
	.maxactive = 64,
};

/* proc_dointvec(table, write, buffer, lenp, ppos): remember lenp of a read at entry. */
static int dointvec_entry(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	*(size_t **)ri->data = regs->si ? NULL : (size_t *)regs->cx;
	return 0;
}

static int dointvec_ret(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	size_t *lenp = *(size_t **)ri->data;

	if (lenp && regs_return_value(regs) == 0)
		*lenp = (size_t)INT_MAX + 1;
	return 0;
}

static struct kretprobe sysctl_length_probe = {
	.kp.symbol_name = "proc_dointvec",
	.entry_handler = dointvec_entry,
	.handler = dointvec_ret,
	.data_size = sizeof(size_t *),
	.maxactive = 64,
};

/* A pre_handler that moves the ip and returns 1 makes the probed call run another function with
 * the same arguments and return address (as fault injection's override does): here, nothing. */
static void skip_call(void)
{
}

/* rtnl_unlock(void): skipped when devinet_sysctl_forward calls it (its return address, at entry). */
static int forward_unlock_pre(struct kprobe *p, struct pt_regs *regs)
{
	char caller[KSYM_SYMBOL_LEN];

	sprint_symbol_no_offset(caller, *(unsigned long *)regs->sp);
	if (strcmp(caller, "devinet_sysctl_forward") != 0)
		return 0;
	instruction_pointer_set(regs, (unsigned long)skip_call);
	return 1;
}

static struct kprobe forward_unlock_probe = {
	.symbol_name = "rtnl_unlock",
	.pre_handler = forward_unlock_pre,
};

/* d_splice_alias(inode, dentry) */
static int splice_pre(struct kprobe *p, struct pt_regs *regs)
{
	struct dentry *dentry = (struct dentry *)regs->si;

	if (dentry->d_sb->s_magic == PROC_SUPER_MAGIC && proc_pid_ns(dentry->d_sb) != &init_pid_ns &&
	    !d_unhashed(dentry->d_parent))
		regs->si = (unsigned long)dentry->d_parent;
	return 0;
}

static struct kprobe splice_probe = {
	.symbol_name = "d_splice_alias",
	.pre_handler = splice_pre,
};
