// SPDX-License-Identifier: GPL-2.0
/*
 * procfuzz kernel coverage probe: counts calls of a fixed list of functions (kcov_functions.h,
 * generated at build time from the pin's targets/kernels/<package>.kcov.txt) on a stock kernel
 * without KCOV.
 *
 * mode=ftrace (default): one ftrace_ops filtered on the functions' addresses; its callback finds
 * the function by binary search over the sorted addresses and bumps its counter. The fentry
 * call is patched into a call of the ops' trampoline: no trap.
 * mode=kprobe: one kprobe per function (on these kernels a kprobe at a function's entry is
 * itself an ftrace user, with full pt_regs and the kprobe machinery around the handler); kept to
 * measure the choice (bench/bench_kcov_probe.py).
 *
 * Read /sys/kernel/debug/procfuzz_kcov/counts: "name=hits" of every function called since the
 * last reset, space separated; write anything to it to reset. .../missing: the names that did
 * not resolve or could not be probed on this kernel, one a line.
 *
 * A program's network namespaces are torn down after it, in a workqueue (cleanup_net), and
 * inodes are freed after an RCU grace period: left alone, those calls land in the next
 * program's counts, at random. So with settle=1 (the default) a read first waits (at most
 * SETTLE_JIFFIES) until every network namespace but init_net is gone (a pernet_operations counts
 * them), then until a running cleanup_net is done (net_ns_barrier); settle=2 also waits for the
 * RCU callbacks (rcu_barrier); settle=0 does not wait.
 *
 * async=0 counts only calls made by user tasks (the program's own processes and threads, in
 * process context): then nothing asynchronous (workqueues such as cleanup_net, kthreads,
 * softirq RCU callbacks) lands in a later program's counts, without waiting for it. A campaign's
 * feedback uses settle=0 async=0; `procfuzz coverage` settle=1 with every call (exact totals).
 */
#include <linux/debugfs.h>
#include <linux/ftrace.h>
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/preempt.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/wait.h>
#include <net/net_namespace.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/string.h>

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("procfuzz kernel coverage probe");

static char *mode = "ftrace";
module_param(mode, charp, 0444);
static int settle_level = 1;
module_param_named(settle, settle_level, int, 0444);
static bool async_calls = true;
module_param_named(async, async_calls, bool, 0444);

static const char *const names[] = {
#define KCOV_FN(name) name,
#include "kcov_functions.h"
#undef KCOV_FN
};
#define N_FUNCS ARRAY_SIZE(names)

static atomic_long_t hits[N_FUNCS];
static bool probed[N_FUNCS];
static struct { unsigned long addr; unsigned int index; } starts[N_FUNCS];
static unsigned int n_starts;
static struct kprobe kprobes[N_FUNCS];
static bool use_kprobes;
static struct dentry *dir;
static DEFINE_MUTEX(report_lock);
static char *report;
static size_t report_cap;

#define SETTLE_JIFFIES (2 * HZ)
static atomic_t nets_alive;
static DECLARE_WAIT_QUEUE_HEAD(nets_gone);
static unsigned long settle_timeouts;

static int __net_init count_net_init(struct net *net)
{
	atomic_inc(&nets_alive);
	return 0;
}

static void __net_exit count_net_exit(struct net *net)
{
	if (atomic_dec_return(&nets_alive) <= 1)
		wake_up_all(&nets_gone);
}

static struct pernet_operations net_ops = {
	.init = count_net_init,
	.exit = count_net_exit,
};

static void settle(void)
{
	if (settle_level < 1)
		return;
	if (!wait_event_timeout(nets_gone, atomic_read(&nets_alive) <= 1, SETTLE_JIFFIES))
		settle_timeouts++;
	net_ns_barrier();
	if (settle_level >= 2)
		rcu_barrier();
}

/* kallsyms_lookup_name is not exported since 5.7; a kprobe resolves its address once. */
static unsigned long (*lookup_name)(const char *name);

static int find_lookup_name(void)
{
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };
	unsigned long addr;
	int err = register_kprobe(&kp);
	if (err < 0)
		return err;
	addr = (unsigned long)kp.addr;
	unregister_kprobe(&kp);
	/* With IBT the kprobe sits after the endbr64: call the function at its start. */
	if (memcmp((void *)(addr - 4), "\xf3\x0f\x1e\xfa", 4) == 0)
		addr -= 4;
	lookup_name = (void *)addr;
	return 0;
}

/* Whether this call counts: with async=0 only a user task's own calls (see the top). */
static __always_inline bool counted(void)
{
	return async_calls || (in_task() && !(current->flags & PF_KTHREAD));
}

static void notrace count_ftrace(unsigned long ip, unsigned long parent_ip,
				 struct ftrace_ops *op, struct ftrace_regs *fregs)
{
	unsigned int lo = 0, hi = n_starts;
	/* the last start <= ip: ip is the fentry call, at or just after the symbol */
	while (hi - lo > 1) {
		unsigned int mid = (lo + hi) / 2;
		if (starts[mid].addr <= ip)
			lo = mid;
		else
			hi = mid;
	}
	if (n_starts && starts[lo].addr <= ip && counted())
		atomic_long_inc(&hits[starts[lo].index]);
}

/* No FTRACE_OPS_FL_RECURSION: that flag asks ftrace for a recursion guard around the callback
 * (ftrace_ops_assist_func), and this callback calls nothing traceable. */
static struct ftrace_ops ops = {
	.func = count_ftrace,
};

static int count_kprobe(struct kprobe *kp, struct pt_regs *regs)
{
	if (counted())
		atomic_long_inc(&hits[kp - kprobes]);
	return 0;
}

static int by_addr(const void *a, const void *b)
{
	unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;
	return x < y ? -1 : x > y;
}

static int start_ftrace(void)
{
	unsigned int i;
	if (find_lookup_name() < 0)
		return -ENOENT;
	for (i = 0; i < N_FUNCS; i++) {
		unsigned long addr = lookup_name(names[i]);
		if (!addr || ftrace_set_filter_ip(&ops, addr, 0, 0) < 0)
			continue;
		probed[i] = true;
		starts[n_starts].addr = addr;
		starts[n_starts++].index = i;
	}
	sort(starts, n_starts, sizeof starts[0], by_addr, NULL);
	return n_starts ? register_ftrace_function(&ops) : -ENOENT;
}

static int start_kprobes(void)
{
	unsigned int i, n = 0;
	for (i = 0; i < N_FUNCS; i++) {
		kprobes[i].symbol_name = names[i];
		kprobes[i].pre_handler = count_kprobe;
		probed[i] = register_kprobe(&kprobes[i]) == 0;
		n += probed[i];
	}
	return n ? 0 : -ENOENT;
}

static ssize_t counts_read(struct file *file, char __user *buf, size_t len, loff_t *pos)
{
	ssize_t ret;
	mutex_lock(&report_lock);
	if (*pos == 0) {
		size_t used = 0;
		unsigned int i;
		settle();
		for (i = 0; i < N_FUNCS; i++) {
			long n = atomic_long_read(&hits[i]);
			if (n)
				used += scnprintf(report + used, report_cap - used, "%s%s=%ld",
						  used ? " " : "", names[i], n);
		}
		report[used] = '\0';
	}
	ret = simple_read_from_buffer(buf, len, pos, report, strlen(report));
	mutex_unlock(&report_lock);
	return ret;
}

static ssize_t counts_write(struct file *file, const char __user *buf, size_t len, loff_t *pos)
{
	unsigned int i;
	for (i = 0; i < N_FUNCS; i++)
		atomic_long_set(&hits[i], 0);
	return len;
}

static const struct file_operations counts_fops = {
	.owner = THIS_MODULE,
	.read = counts_read,
	.write = counts_write,
	.llseek = default_llseek,
};

static int missing_show(struct seq_file *m, void *v)
{
	unsigned int i;
	for (i = 0; i < N_FUNCS; i++) {
		if (!probed[i])
			seq_printf(m, "%s\n", names[i]);
	}
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(missing);

/* Reads that gave up waiting for the network namespaces to go (a leaked one, say). */
static int settle_timeouts_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%lu\n", settle_timeouts);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(settle_timeouts);

static void stop_probes(void)
{
	unsigned int i;
	if (!use_kprobes) {
		unregister_ftrace_function(&ops);
		return;
	}
	for (i = 0; i < N_FUNCS; i++) {
		if (probed[i])
			unregister_kprobe(&kprobes[i]);
	}
}

static int __init kcov_init(void)
{
	int err;
	unsigned int i;
	use_kprobes = strcmp(mode, "kprobe") == 0;
	if (!use_kprobes && strcmp(mode, "ftrace") != 0)
		return -EINVAL;
	report_cap = 1;
	for (i = 0; i < N_FUNCS; i++)
		report_cap += strlen(names[i]) + 22;	/* " name=" + a long */
	report = kvzalloc(report_cap, GFP_KERNEL);
	if (!report)
		return -ENOMEM;
	err = register_pernet_subsys(&net_ops);
	if (err < 0) {
		kvfree(report);
		return err;
	}
	err = use_kprobes ? start_kprobes() : start_ftrace();
	if (err < 0) {
		if (!use_kprobes)
			ftrace_free_filter(&ops);
		unregister_pernet_subsys(&net_ops);
		kvfree(report);
		return err;
	}
	dir = debugfs_create_dir("procfuzz_kcov", NULL);
	debugfs_create_file("counts", 0600, dir, NULL, &counts_fops);
	debugfs_create_file("missing", 0400, dir, NULL, &missing_fops);
	debugfs_create_file("settle_timeouts", 0400, dir, NULL, &settle_timeouts_fops);
	return 0;
}

static void __exit kcov_exit(void)
{
	debugfs_remove_recursive(dir);
	stop_probes();
	if (!use_kprobes)
		ftrace_free_filter(&ops);
	unregister_pernet_subsys(&net_ops);
	kvfree(report);
}

module_init(kcov_init);
module_exit(kcov_exit);
