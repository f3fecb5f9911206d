"""Kernel failure reports in console output: find the first one and give it a one-line title.

Titles follow syzkaller's pkg/report: they name the kind of report and the first function of the
stack that is not generic machinery (trap and WARN plumbing, the scheduler, lock and wait
primitives, kprobe trampolines), never addresses, pids, CPUs or timestamps, so the same bug gets
the same title on every run and on every kernel that inlines alike:
``BUG: kernel NULL pointer dereference in step_into``, ``INFO: task hung in rtnetlink_rcv_msg``.

The first report wins: a ``Kernel panic`` that an oops caused (``oops=panic``) keeps the oops'
title. ``Report.frames`` lists the first reliable stack frames in procfuzz's own code areas, for
grouping findings by where in proc/dcache/pid code they happen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXCERPT_BEFORE = 5
EXCERPT_LINES = 300
TITLE_LIMIT = 200
OWN_FRAMES_LIMIT = 4

_ANSI = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-z]|[^\[])")
_PREFIX = re.compile(r"^\[\s*\d+\.\d+\]\s*(\[\s*[CT]\d+\]\s*)?")
_FUNC = r"[A-Za-z_][\w.]*"
# `RIP: 0010:func+0x27b/0x760 [module]` (kernel mode; a user RIP is a bare address)
_RIP = re.compile(rf"\bR?IP: (?:[0-9a-f]{{4}}:)?(?:\[<[0-9a-f]+>\] )?(?P<func>{_FUNC})\+0x[0-9a-f]+"
                  r"(?:/0x[0-9a-f]+)?(?: \[(?P<module>\w+)[^\]]*\])?")
# ` ? func+0x12/0x34 [module]`, or symbolized ` func+0x12/0x34 fs/proc/base.c:12` and
# ` func fs/proc/base.c:12 [inline]`; `?` marks a frame the unwinder is not sure of.
_FRAME = re.compile(rf"^\s*(?:\[<[0-9a-f]+>\] )?(?P<unreliable>\? )?(?P<func>{_FUNC})"
                    r"(?:\+0x[0-9a-f]+/0x[0-9a-f]+(?: (?P<file>[\w./-]+\.[chS]):\d+)?"
                    r"|(?: (?P<file_only>[\w./-]+\.[chS]):\d+))"
                    r"(?: \[(?P<module>\w+)[^\]]*\])?\s*$")
_SECTION = re.compile(r"^\s*<(?P<close>/)?(?P<name>TASK|IRQ|NMI|SOFTIRQ|#DF)>\s*$")
_STACK_END = re.compile(r"---\[ end trace|^Kernel Offset:|^Kernel panic - not syncing")
_NAME_SUFFIXES = re.compile(r"(?:\.(?:constprop|isra|part|cold|llvm|lto_priv|localalias)(?:\.\d+)?)+$")
# Numbers that change from run to run, wherever a title keeps text from the console line.
_VOLATILE = re.compile(r"\b(?:0x)?[0-9a-f]{8,16}\b|\[[^\]]*:\d+\]|\bCPU#?\d+|\bstuck for \d+s!|"
                       r"\bpid:? ?\d+|\b\d+ (?:seconds|jiffies|ticks)")

# Functions that are never the title: the machinery that prints, traps, panics, schedules, waits,
# takes locks or runs kprobes on the way to (or around) the code at fault.
_GENERIC = re.compile("|".join([
    r"^_*dump_stack", r"^show_stack", r"^show_trace", r"^_*warn(?:_slowpath|$|_bogus)", r"^report_bug",
    r"^fixup_bug", r"^handle_bug", r"^_*die(?:_|$)", r"^oops_", r"panic$", r"^_*exc_", r"^asm_exc_",
    r"^do_error_trap", r"^do_trap", r"^do_int3", r"^page_fault_oops", r"^kernelmode_fixup_or_oops",
    r"^_*bad_area", r"^do_user_addr_fault", r"^do_kern_addr_fault", r"^handle_page_fault",
    r"^spurious_kernel_fault", r"^no_context", r"^die_addr", r"^do_general_protection",
    r"^_*schedule", r"^io_schedule", r"^preempt_schedule", r"^do_nanosleep", r"^_*wait_for_common",
    r"^do_wait_for_common", r"^wait_for_completion", r"^_*mutex_", r"^_*rt_mutex_", r"^rwsem_",
    r"^_*down(?:_|$)", r"^_*up(?:_|$)", r"_spin_lock", r"_spin_unlock", r"^_*read_lock", r"^_*write_lock",
    r"^_*wait_on_bit", r"^out_of_line_wait_on_bit", r"^bit_wait", r"^_*flush_work", r"^percpu_",
    r"^_*switch_to", r"^_*folio_(?:wait|lock|unlock|alloc)", r"^_*filemap_get_folio",
    r"^truncate_inode_pages_range",
    r"^do_syscall_", r"^entry_SYSCALL", r"^syscall_", r"^_*x64_sys_", r"^ret_from_fork", r"^kthread$",
    r"^worker_thread", r"^process_one_work", r"^process_scheduled_works", r"^context_switch",
    r"^irqentry_", r"^_*sysvec_", r"^asm_sysvec_", r"^_*irq_exit", r"^asm_common_interrupt",
    r"^kprobe", r"^_*kretprobe", r"^pre_handler_kretprobe", r"^trampoline_handler", r"^arch_rethook",
    r"^rethook_", r"^_*ftrace", r"^fprobe", r"^opt_pre_handler", r"^optimized_callback",
    r"^refcount_warn", r"^_*refcount_", r"^_*list_(?:add|del)", r"^_*check_(?:object|heap)", r"^check_copy_size",
    r"^_*kasan", r"^_*asan_", r"^print_report", r"^print_address_description",
    r"^_*ubsan", r"^_*might_resched", r"^_*might_fault", r"^_*might_sleep",
]))
# Stalls are detected from an interrupt; the stalled code is the interrupted task's.
_STALL_IRQ_SECTIONS = ("IRQ", "NMI", "SOFTIRQ")

# The parts of the kernel procfuzz exercises, by function-name prefix, and by source path where a
# symbolized log shows one. Frames there say which of our operations a report came from, which
# the title (first non-generic frame, often VFS or syscall glue) does not.
OWN_CODE_AREAS = {
    "procfs": ("proc_", "pid_revalidate", "pid_getattr", "pid_update_inode", "pid_delete_dentry",
               "tid_fd_", "next_tgid", "first_tid", "next_tid", "has_pid_permissions", "mounts_open",
               "fs/proc/"),
    "sysctl": ("sysctl_", "__register_sysctl", "register_sysctl", "unregister_sysctl", "drop_sysctl_table",
               "get_subdir", "insert_header", "erase_header", "put_links", "start_unregistering",
               "devinet_", "addrconf_sysctl", "neigh_sysctl", "__devinet_sysctl", "fs/proc/proc_sysctl.c"),
    "dcache/namei/inode": ("d_", "__d_", "dput", "dget", "dentry_", "shrink_dcache", "fast_dput",
                           "lookup_", "__lookup_", "walk_component", "step_into", "handle_mounts",
                           "path_", "filename_", "link_path_walk", "pick_link", "open_last_lookups",
                           "do_open", "vfs_readlink", "iput", "evict", "inode_", "new_inode", "iget",
                           "fs/dcache.c", "fs/namei.c", "fs/inode.c"),
    "pid/exit/fork/namespaces": ("alloc_pid", "free_pid", "put_pid", "find_pid", "find_get_pid",
                                 "attach_pid", "detach_pid", "change_pid", "exchange_tids",
                                 "transfer_pid", "do_exit", "do_group_exit", "exit_notify",
                                 "release_task", "__exit_signal", "de_thread", "copy_process",
                                 "kernel_clone", "create_new_namespaces", "unshare_nsproxy_namespaces",
                                 "switch_task_namespaces", "copy_pid_ns", "create_pid_namespace",
                                 "put_pid_ns", "zap_pid_ns_processes", "copy_net_ns", "setup_net",
                                 "cleanup_net", "kernel/pid.c", "kernel/pid_namespace.c",
                                 "kernel/exit.c", "kernel/fork.c", "kernel/nsproxy.c"),
    "net device registration": ("register_netdevice", "unregister_netdevice", "__register_netdevice",
                                "rtnl_", "__rtnl_", "rtnetlink_", "dev_change_name", "dev_change_net_namespace",
                                "netdev_run_todo", "default_device_exit", "net/core/dev.c",
                                "net/core/rtnetlink.c", "net/core/net_namespace.c"),
}
_OWN_NAMES = tuple(p for prefixes in OWN_CODE_AREAS.values() for p in prefixes if "/" not in p)
_OWN_FILES = tuple(p for prefixes in OWN_CODE_AREAS.values() for p in prefixes if "/" in p)
# procfuzz's injected bugs (targets/zoo): their functions only run as kprobe handlers or in place
# of a probed function, so the kernel function they sit on is the site of the report.
PROBE_MODULES = ("zoo",)


@dataclass(frozen=True)
class _Kind:
    """One kind of report: the pattern of its first line and how it is titled. ``title`` is a
    format over the pattern's named groups; `` in <func>`` is appended when a frame is found,
    taken from the stack (``stall``: outside interrupt sections), else ``fallback`` is the title
    if there is one (for reports whose stack the console may not show)."""
    start: re.Pattern
    title: str
    with_func: bool = True
    stall: bool = False
    fallback: str = ""
    skip: re.Pattern | None = None      # more machinery, particular to this kind


# In the order they are tried on each line; the first line that matches any starts the report.
_KINDS = [
    _Kind(re.compile(r"BUG: KASAN: (?P<what>[\w-]+)(?: in (?P<func>[\w.]+))?"), "KASAN: {what}{access}"),
    _Kind(re.compile(r"BUG: kernel NULL pointer dereference|BUG: unable to handle kernel NULL pointer"),
          "BUG: kernel NULL pointer dereference"),
    _Kind(re.compile(r"BUG: unable to handle (?:page fault|kernel paging request)"),
          "BUG: unable to handle page fault"),
    _Kind(re.compile(r"general protection fault"), "general protection fault"),
    _Kind(re.compile(r"BUG: (?:watchdog: )?soft lockup|watchdog: BUG: soft lockup"), "BUG: soft lockup",
          stall=True),
    _Kind(re.compile(r"[Ww]atchdog detected hard LOCKUP"), "BUG: hard lockup", stall=True),
    _Kind(re.compile(r"BUG: workqueue lockup"), "BUG: workqueue lockup", with_func=False),
    _Kind(re.compile(r"BUG: Bad page (?P<what>state|map|cache)"), "BUG: Bad page {what}",
          skip=re.compile(r"bad_page|(?:free|put|get|update|release)_pages?|free_unref|^_*folio|free_pcp")),
    _Kind(re.compile(r"BUG: scheduling while atomic"), "BUG: scheduling while atomic"),
    _Kind(re.compile(r"BUG: sleeping function called from invalid context"),
          "BUG: sleeping function called from invalid context"),
    _Kind(re.compile(r"\b(?P<what>list_(?:add|del)) corruption"), "{what} corruption"),
    _Kind(re.compile(r"refcount_t: (?P<what>[\w -]+)"), "refcount_t: {what}"),
    _Kind(re.compile(r"kernel BUG at (?P<where>[\w./-]+(?::\d+)?)"), "kernel BUG", fallback="kernel BUG at {where}"),
    _Kind(re.compile(r"UBSAN: (?P<what>[\w-]+)"), "UBSAN: {what}"),
    _Kind(re.compile(r"BUG: (?P<what>[^,:\[({]+)"), "BUG: {what}"),
    _Kind(re.compile(r"^WARNING: (?:CPU: \d+ PID: \d+ at \S+ |\S+:\d+ at )(?P<func>[\w.]+)\+0x"), "WARNING"),
    _Kind(re.compile(r"^WARNING: (?P<what>.+)"), "WARNING: {what}"),
    # The blocked task's stack is printed at KERN_INFO: a quiet console shows only its name.
    _Kind(re.compile(r"INFO: task (?P<comm>\S+?):\d+ blocked for more than"), "INFO: task hung",
          fallback="INFO: task hung: {comm}"),
    _Kind(re.compile(r"INFO: \S+ (?:self-)?detected stalls?"), "INFO: rcu detected stall", stall=True),
    _Kind(re.compile(r"^Oops: "), "Oops"),
    _Kind(re.compile(r"invalid opcode: "), "invalid opcode"),
    _Kind(re.compile(r"Kernel panic - not syncing: (?P<what>.+)"), "Kernel panic - not syncing: {what}",
          with_func=False),
]
_ACCESS = re.compile(r"\b(Read|Write) (?:of size|at addr)")


@dataclass(frozen=True)
class Report:
    title: str
    excerpt: str
    frames: tuple[str, ...] = ()     # first reliable frames in OWN_CODE_AREAS, outermost last


@dataclass(frozen=True)
class _Frame:
    func: str
    file: str
    module: str


def clean_lines(text: str) -> list[str]:
    """Console text -> lines without terminal escapes, printk timestamps, carriage returns or
    control characters."""
    lines = []
    for raw in _ANSI.sub("", text.replace("\r", "")).split("\n"):
        line = raw if raw.isprintable() else "".join(ch if ch.isprintable() else "?" for ch in raw)
        lines.append(_PREFIX.sub("", line))
    return lines


def find_report(text: str) -> Report | None:
    lines = clean_lines(text)
    for index, line in enumerate(lines):
        for kind in _KINDS:
            if match := kind.start.search(line):
                return _report(kind, match, lines, index)
    return None


def normalize_function(name: str) -> str:
    """``d_alloc_parallel.cold`` / ``__mutex_lock.constprop.0`` -> the function's source name."""
    return _NAME_SUFFIXES.sub("", name)


def _report(kind: _Kind, match: re.Match, lines: list[str], index: int) -> Report:
    frames = _stack(lines, index, kind.stall)
    fields = {name: value if name == "func" else _stable(value[:TITLE_LIMIT])
              for name, value in match.groupdict().items() if value}
    if "{access}" in kind.title:        # KASAN: the access follows on one of the next lines
        access = next((m for later in lines[index:index + 5] if (m := _ACCESS.search(later))), None)
        fields["access"] = f" {access.group(1)}" if access else ""
    title = kind.title.format_map(_Blank(fields))
    if kind.with_func:
        # WARNING's own line names the function; the stack confirms or skips it like any frame.
        named = [_Frame(normalize_function(fields["func"]), "", "")] if "func" in fields else []
        func = next((f.func for f in named + frames if _is_site(f, kind)), None)
        if func:
            title += f" in {func}"
        elif kind.fallback:
            title = kind.fallback.format_map(_Blank(fields))
    start = max(0, index - EXCERPT_BEFORE)
    excerpt = "\n".join(lines[start:index + EXCERPT_LINES])
    own = tuple(f.func for f in frames if _is_own(f))[:OWN_FRAMES_LIMIT]
    return Report(title[:TITLE_LIMIT], excerpt, own)


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return ""


def _stable(text: str) -> str:
    return " ".join(_VOLATILE.sub(" ", text).split()).strip(" ,:;.!")


def _stack(lines: list[str], index: int, stall: bool) -> list[_Frame]:
    """Reliable frames (the faulting RIP first) of the report starting at ``lines[index]``, up to
    the end of its first task stack, its end marker, or the next report. Only the excerpt's
    lines are read, so that a saved excerpt parses to the same report."""
    frames: list[_Frame] = []
    sections: list[str] = []
    for line in lines[index + 1:index + EXCERPT_LINES]:
        if section := _SECTION.match(line):
            if section["close"]:
                if section["name"] == "TASK" and frames:
                    break
                if section["name"] in sections:
                    sections.remove(section["name"])
            else:
                sections.append(section["name"])
            continue
        if _STACK_END.search(line) or (frames and any(k.start.search(line) for k in _KINDS)):
            break
        if stall and any(s in _STALL_IRQ_SECTIONS for s in sections):
            continue
        if rip := _RIP.search(line):
            frames.append(_Frame(normalize_function(rip["func"]), "", rip["module"] or ""))
        elif (frame := _FRAME.match(line)) and not frame["unreliable"]:
            frames.append(_Frame(normalize_function(frame["func"]), frame["file"] or frame["file_only"] or "",
                                 frame["module"] or ""))
    return frames


def _is_site(frame: _Frame, kind: _Kind) -> bool:
    return (frame.module not in PROBE_MODULES and not _GENERIC.search(frame.func)
            and not (kind.skip and kind.skip.search(frame.func)))


def _is_own(frame: _Frame) -> bool:
    if frame.module in PROBE_MODULES:
        return False
    return frame.func.startswith(_OWN_NAMES) or (bool(frame.file) and frame.file.startswith(_OWN_FILES))
