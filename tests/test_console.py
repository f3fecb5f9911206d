"""Crash titles from console logs (targets/console.py).

Plain tests parse the real consoles of tests/data/consoles (captured from the pinned kernels by
capture.py) and small hand-made reports; the ``-m kernel`` test provokes a zoo crash bug on the
default kernel and reads the title from the QemuTarget's trace."""

import random
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from targets.console import OWN_CODE_AREAS, TITLE_LIMIT, find_report, normalize_function

CONSOLES = Path(__file__).parent / "data" / "consoles"
EXPECTED = tomllib.loads((CONSOLES / "expected.toml").read_text())
LOGS = {path.stem: path.read_text() for path in sorted(CONSOLES.glob("*.log"))}


def test_every_log_has_an_expectation_and_both_kernels_are_covered():
    assert set(EXPECTED) == set(LOGS)
    real = [name for name in LOGS if name.startswith(("6.1-cloud-", "6.12-cloud-"))]
    assert {name.split("-cloud-")[0] for name in real} == {"6.1", "6.12"}
    assert len(real) >= 6
    kinds = {EXPECTED[name]["title"].split(" in ")[0].split(":")[0] for name in real}
    assert len(kinds) >= 4
    assert all(EXPECTED[name].get("source") for name in set(EXPECTED) - set(real))   # found, not captured


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_saved_console_gives_expected_title_and_frames(name):
    report = find_report(LOGS[name])
    assert report.title == EXPECTED[name]["title"]
    assert report.frames == tuple(EXPECTED[name]["frames"])
    assert report.title.split(" in ")[0].split(":")[0] in report.excerpt


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_excerpt_alone_gives_the_same_report(name):
    # findings keep the excerpt (console.log), not the whole console
    report = find_report(LOGS[name])
    assert find_report(report.excerpt) == report


# A number a title may keep: none. Function names may hold digits (do_syscall_64), numbers alone not.
_NUMBER = re.compile(r"(?<![\w.])(?:0x)?\d[\w]*")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_titles_hold_no_numbers(name):
    assert not _NUMBER.search(EXPECTED[name]["title"]), EXPECTED[name]["title"]


def _rerun(console: str, rng: random.Random) -> str:
    """The same console as another run would print it: other timestamps, pids, CPUs, addresses
    and code offsets."""
    def hex_like(m):
        return "".join(rng.choice("0123456789abcdef") for _ in m.group(0))
    console = re.sub(r"\[\s*\d+\.\d+\]", lambda m: f"[{rng.uniform(0, 9999):12.6f}]", console)
    console = re.sub(r"(?<=PID: )\d+|(?<=pid:)\d+|(?<=CPU: )\d|(?<=:)\d+(?= blocked)",
                     lambda m: str(rng.randrange(1, 4000)), console)
    console = re.sub(r"(?<![\w])[0-9a-f]{8,16}(?![\w])", hex_like, console)
    return re.sub(r"(?<=\+0x)[0-9a-f]+", hex_like, console)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_title_and_frames_survive_another_run(name):
    rng = random.Random(name)
    original = find_report(LOGS[name])
    for _ in range(3):
        rerun = find_report(_rerun(LOGS[name], rng))
        assert (rerun.title, rerun.frames) == (original.title, original.frames)


# ---- the first report wins ------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in sorted(LOGS) if "Kernel panic - not syncing: Fatal exception" in LOGS[n]])
def test_panic_caused_by_an_oops_keeps_the_oops_title(name):
    assert not find_report(LOGS[name]).title.startswith("Kernel panic")
    panic_only = LOGS[name][LOGS[name].index("Kernel panic - not syncing"):]
    assert find_report(panic_only).title == "Kernel panic - not syncing: Fatal exception"


# ---- bad console text -----------------------------------------------------------------------

def _sane(report):
    assert report is None or (0 < len(report.title) <= TITLE_LIMIT and "\n" not in report.title
                              and len(report.frames) <= 4)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000))
def test_binary_garbage_never_raises(data):
    _sane(find_report(data.decode("utf-8", errors="replace")))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("BUG: WARNING INFO task Oops RIP 0010 <TASK> </TASK> ? +0x/[]\n"
                                              "abc_.01 kernel panic - not syncing")), max_size=2000))
def test_report_shaped_garbage_never_raises(text):
    _sane(find_report(text))


@pytest.mark.parametrize("name", sorted(LOGS))
def test_truncated_consoles_give_none_or_a_sane_title(name):
    console = LOGS[name]
    for cut in range(0, len(console), max(1, len(console) // 97)):
        _sane(find_report(console[:cut]))
        _sane(find_report(console[cut:]))


# ---- frame rules, on small hand-made reports in the kernels' formats ---------------------------

def _console(*lines: str) -> str:
    return "".join(f"[  {i + 10}.000000] {line}\n" for i, line in enumerate(lines))


def test_probe_machinery_zoo_handlers_and_unreliable_frames_are_skipped():
    report = find_report(_console(
        "BUG: unable to handle page fault for address: ffffffffffffffe8",
        "Oops: 0000 [#1] PREEMPT SMP NOPTI",
        "RIP: 0010:bogus_dentry_ret+0x12/0x30 [zoo]",
        "Call Trace:", " <TASK>",
        " ? __die_body.cold+0x1a/0x1f", " ? page_fault_oops+0xae/0x280",
        " __kretprobe_trampoline_handler+0x8d/0x120", " trampoline_handler+0x44/0x60",
        " __kretprobe_trampoline+0x2a/0x50", " kprobe_ftrace_handler+0x10d/0x1b0",
        " proc_pid_lookup.constprop.0+0x51/0x100", " proc_root_lookup+0x1d/0x50",
        " __lookup_slow+0x86/0x130", " do_syscall_64+0x5d/0x90", " entry_SYSCALL_64_after_hwframe+0x6e/0xd8",
        " </TASK>"))
    assert report.title == "BUG: unable to handle page fault in proc_pid_lookup"
    assert report.frames == ("proc_pid_lookup", "proc_root_lookup", "__lookup_slow")


def test_hung_task_title_skips_the_scheduler_and_lock_frames():
    report = find_report(_console(
        "INFO: task p2:123 blocked for more than 120 seconds.",
        "task:p2              state:D stack:0     pid:123   ppid:1      flags:0x00004002",
        "Call Trace:", " <TASK>", " __schedule+0x34d/0x9e0", " schedule+0x5a/0xd0",
        " schedule_timeout+0x128/0x140", " __wait_for_common+0x90/0x190",
        " wait_for_completion+0x24/0x30", " unregister_sysctl_table.part.0+0x5c/0x90",
        " __devinet_sysctl_unregister.isra.0+0x2c/0x50", " </TASK>",
        "INFO: task p3:124 blocked for more than 120 seconds."))
    assert report.title == "INFO: task hung in unregister_sysctl_table"
    assert report.frames == ("unregister_sysctl_table", "__devinet_sysctl_unregister")


def test_rcu_stall_is_titled_by_the_interrupted_task_not_the_interrupt():
    report = find_report(_console(
        "rcu: INFO: rcu_preempt self-detected stall on CPU",
        "rcu: \t1-....: (5250 ticks this GP) idle=8d4c/1/0x4000000000000000 softirq=1/1 fqs=2625",
        "CPU: 1 PID: 87 Comm: p2 Tainted: G           OE      6.1.0-50-cloud-amd64 #1",
        "Call Trace:", " <IRQ>", " rcu_sched_clock_irq+0x3c1/0xbd0", " update_process_times+0x5b/0x90",
        " tick_sched_timer+0x88/0xa0", " __hrtimer_run_queues+0x120/0x2b0", " </IRQ>", " <TASK>",
        " asm_sysvec_apic_timer_interrupt+0x16/0x20",
        "RIP: 0010:d_walk+0x96/0x2c0",
        " shrink_dcache_parent+0x54/0x140", " d_invalidate+0x48/0xf0", " proc_invalidate_siblings_dcache+0x10f/0x200",
        " </TASK>"))
    assert report.title == "INFO: rcu detected stall in d_walk"
    assert report.frames == ("d_walk", "shrink_dcache_parent", "d_invalidate", "proc_invalidate_siblings_dcache")


@pytest.mark.parametrize("lines, title", [
    (["------------[ cut here ]------------", "refcount_t: underflow; use-after-free.",
      "WARNING: CPU: 0 PID: 90 at lib/refcount.c:28 refcount_warn_saturate+0xba/0x110",
      "RIP: 0010:refcount_warn_saturate+0xba/0x110", "Call Trace:", " <TASK>",
      " put_pid.part.0+0x3a/0x40", " release_task+0x4d5/0x5e0", " </TASK>"],
     "refcount_t: underflow in put_pid"),
    (["list_add corruption. prev->next should be next (ff4636b1425f8a10), but was 0000000000000000. "
      "(prev=ff4636b1425f8a10).", "kernel BUG at lib/list_debug.c:30!",
      "invalid opcode: 0000 [#1] PREEMPT SMP NOPTI",
      "RIP: 0010:__list_add_valid.cold+0x3a/0x3c", "Call Trace:", " <TASK>",
      " d_alloc_parallel+0x2bb/0x4e0", " </TASK>"],
     "list_add corruption in d_alloc_parallel"),
    (["BUG: Bad page state in process p2  pfn:1e2c3", "page:ffffe4f2c00b0c0 refcount:0 mapcount:1",
      "Call Trace:", " <TASK>", " dump_stack_lvl+0x44/0x5c", " bad_page.cold+0x63/0x94",
      " free_unref_page_prepare+0x15a/0x3a0", " proc_pid_cmdline_read+0x1c2/0x3b0", " </TASK>"],
     "BUG: Bad page state in proc_pid_cmdline_read"),
    (["BUG: workqueue lockup - pool cpus=0 node=0 flags=0x0 nice=0 stuck for 31s!"], "BUG: workqueue lockup"),
    (["BUG: KASAN: slab-use-after-free in d_walk+0x6a/0x2c0", "Read of size 8 at addr ff11000012345678 by task p2/91"],
     "KASAN: slab-use-after-free Read in d_walk"),
    (["WARNING: CPU: 1 PID: 4 at fs/dcache.c:365 dentry_free+0x8d/0x90", "RIP: 0010:dentry_free+0x8d/0x90"],
     "WARNING in dentry_free"),
    (["Oops: general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1]",
      "RIP: 0010:step_into+0x27b/0x760"], "general protection fault in step_into"),
    (["watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [p2:91]", "RIP: 0010:next_tgid+0x40/0xc0"],
     "BUG: soft lockup in next_tgid"),
])
def test_report_kinds(lines, title):
    assert find_report(_console(*lines)).title == title


def test_function_names_are_normalised():
    assert normalize_function("__mutex_lock.constprop.0") == "__mutex_lock"
    assert normalize_function("d_alloc_parallel.cold") == "d_alloc_parallel"
    assert normalize_function("unregister_sysctl_table.part.0.isra.0") == "unregister_sysctl_table"


def test_own_code_areas_are_prefixes_or_source_paths():
    for area, prefixes in OWN_CODE_AREAS.items():
        assert prefixes and all(p and " " not in p for p in prefixes), area


# ---- a real guest ---------------------------------------------------------------------------

@pytest.mark.kernel
def test_zoo_crash_bug_gives_its_title_on_the_default_kernel():
    from tests.data.consoles.capture import CASES, CapturingTarget
    bug, program = CASES["crash_lookup_null"]
    with CapturingTarget(zoo=True) as target:      # no replacement boot after the crash
        assert target.load_zoo(bug) == "ok"
        trace = target.run(program)
    assert trace.outcome == "crash"
    assert trace.title == "BUG: kernel NULL pointer dereference in step_into"
    assert "step_into" in trace.extra["console"]
