"""Kernel coverage without a kernel: the guest's "K" line is parsed with bounds and garbage is
refused; the probed-function lists are made from kernel sources and guest symbols as documented,
and the committed lists parse."""

import pytest

from targets.coverage.build import functions_header
from targets.coverage.lists import (ListError, ProbeList, definitions, format_list, load_probe_list, parse_list,
                                    probe_list)
from targets.kernels import load_pins
from targets.protocol import MAX_KCOV_ENTRIES, ProtocolError, parse_kcov, parse_results, split_kcov


def test_a_coverage_line_gives_hits_per_function():
    assert parse_kcov(b"K proc_task_lookup=4 find_entry.isra.0=227") == {"proc_task_lookup": 4,
                                                                         "find_entry.isra.0": 227}
    assert parse_kcov(b"K") == {}


@pytest.mark.parametrize("line", [
    b"", b"X a=1", b"K a=1 a=2", b"K a=", b"K =1", b"K a=-1", b"K a=1e3", b"K a==1", b"K 1a=1",
    b"K a=1  b=2", b"K a=1 ", b"K a/b=1", b"K a.b=1", b"K a=1234567890123456789", b"K a=\xff",
    b"K " + b"x" * 82 + b"=1", b"K a=1\nb=2",
])
def test_garbled_coverage_lines_are_refused(line):
    with pytest.raises(ProtocolError):
        parse_kcov(line)


def test_coverage_lines_are_bounded():
    many = " ".join(f"f{i}=1" for i in range(MAX_KCOV_ENTRIES + 1))
    with pytest.raises(ProtocolError):
        parse_kcov(b"K " + many.encode())
    with pytest.raises(ProtocolError):
        parse_kcov(b"K a=1" + b" a=1" * 20000)      # longer than the agent can send


def test_the_coverage_line_is_split_off_the_results():
    payload = b"T 10 20\nS\nok\nok:dir\nK proc_pid_lookup=1\n"
    body, line = split_kcov(payload)
    assert parse_results(body, 2)[2] == ("ok", "ok:dir")
    assert parse_kcov(line) == {"proc_pid_lookup": 1}
    assert split_kcov(b"T 1 2\nS\nK\n") == (b"T 1 2\nS\n", b"K")
    with pytest.raises(ProtocolError):
        split_kcov(b"K a=1")


def test_function_definitions_are_found_in_kernel_style_c():
    source = """\
static const struct file_operations proc_fops = {
	.read = proc_read,
};

static int proc_pid_foo(struct seq_file *m,
			struct pid *pid)
{
	if (x) {
		return 0;
	}
}

struct dentry *
proc_pid_lookup(struct dentry *dentry, unsigned int flags)
{
}
void __init proc_root_init(void)
{
}
"""
    assert definitions(source) == [("proc_pid_foo", False), ("proc_pid_lookup", False), ("proc_root_init", True)]


def test_a_candidate_is_probed_only_as_a_single_traceable_symbol():
    found = {"kept": "fs/proc/base.c", "cloned": "fs/proc/base.c", "split": "fs/proc/base.c",
             "gone": "fs/proc/base.c", "twice": "fs/proc/fd.c", "untraced": "fs/proc/proc_sysctl.c"}
    kallsyms = {"kept": ["kept"], "cloned": ["cloned.isra.0"], "split": ["split", "split.part.0"],
                "twice": ["twice", "twice"], "untraced": ["untraced"]}
    ftrace = {"kept": 1, "cloned.isra.0": 1, "split": 1, "twice": 2}
    probes = probe_list(found, kallsyms, ftrace)
    assert probes.functions == (("fs/proc/base.c", "cloned.isra.0"), ("fs/proc/base.c", "kept"),
                                ("fs/proc/base.c", "split"))
    assert probes.skipped == (("duplicate", "fs/proc/fd.c", "twice"), ("inlined", "fs/proc/base.c", "gone"),
                              ("notrace", "fs/proc/proc_sysctl.c", "untraced"))
    text = format_list(probes, "linux-image-x", "6.1.192")
    assert parse_list(text).functions == probes.functions
    assert "#   fs/proc/base.c gone" in text
    assert functions_header(probes) == b'KCOV_FN("cloned.isra.0")\nKCOV_FN("kept")\nKCOV_FN("split")\n'


@pytest.mark.parametrize("text", ["fs/proc/base.c", "fs/proc/base.c a b", "/etc/x.c a", "fs/proc/base.c a\"b",
                                  "fs/proc/base.c a\nfs/proc/fd.c a"])
def test_a_bad_list_is_refused(text):
    with pytest.raises(ListError):
        parse_list(text)


@pytest.mark.parametrize("pin", ["6.1-cloud", "6.12-cloud"])
def test_the_committed_lists_cover_the_mirrored_code(pin):
    probes = load_probe_list(pin)
    assert isinstance(probes, ProbeList) and len(probes.functions) > 250
    files = {path for path, _ in probes.functions}
    assert {"fs/proc/base.c", "fs/proc/proc_sysctl.c", "fs/proc/root.c", "net/sysctl_net.c"} <= files
    assert {"proc_task_lookup", "proc_pid_lookup", "proc_sys_read", "proc_sys_call_handler",
            "cleanup_net", "unregister_net_sysctl_table"} <= set(probes.names)


def test_every_pin_with_a_list_is_a_pin():
    _, pins = load_pins()
    assert load_probe_list(None).functions == load_probe_list(next(p for p in pins if p == "6.1-cloud")).functions
