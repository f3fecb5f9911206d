"""The sysctl side of the model: devices register tables, rename/move/delete unregister them,
and the reader's network namespace decides what /proc/sys/net shows."""

import pytest

from reference.profile import KernelProfile
from reference.program import parse_text
from targets.model_target import ModelTarget

LEAVES = {"forwarding": "reg", "mtu": "reg"}
NEIGH = {"retrans_time": "reg"}
PROFILE = KernelProfile.from_json({
    "release": "test", "root": {"sys": "dir"}, "root_links": {}, "tid": {},
    "tgid": {"status": "reg", "task": "dir"},
    "sysctl": {
        "sys": {"net": "dir", "kernel": "dir"}, "net": {"ipv4": "dir", "ipv6": "dir", "core": "dir"},
        "ipv4": {"conf": "dir", "neigh": "dir", "ip_forward": "reg"},
        "ipv6": {"conf": "dir", "neigh": "dir"},
        "ipv4_conf": {"all": "dir", "default": "dir", "lo": "dir"},
        "ipv6_conf": {"all": "dir", "default": "dir", "lo": "dir"},
        "ipv4_neigh": {"lo": "dir"}, "ipv6_neigh": {"lo": "dir"},
        **{f"{p}_conf_{t}": LEAVES for p in ("ipv4", "ipv6") for t in ("all", "default", "dev")},
        **{f"{p}_neigh_dev": NEIGH for p in ("ipv4", "ipv6")},
    },
})
CONF = "{m1}/sys/net/ipv4/conf"


def run(text):
    trace = ModelTarget(PROFILE).run(parse_text("m1 = mount_proc p1\n" + text))
    assert trace.outcome == "ok", trace.title
    return list(trace.results[1:])


def test_a_fresh_namespace_has_only_lo():
    assert run(f"readdir p1 {CONF}\nreaddir p1 {{m1}}/sys/net/ipv6/neigh\nreaddir p1 {CONF}/lo\n") == \
        ["ok:all,default,lo", "ok:lo", "ok:forwarding,mtu"]


def test_link_add_registers_four_tables_and_link_del_removes_them():
    results = run(f"link_add p1 d0\nlookup p1 {CONF}/d0\nlookup p1 {{m1}}/sys/net/ipv6/neigh/d0/retrans_time\n"
                  f"link_add p1 d0\nlink_del p1 d0\nlookup p1 {CONF}/d0\nlink_del p1 d0\nlink_del p1 lo\n")
    assert results == ["ok", "ok:dir", "ok:reg", "EEXIST", "ok", "ENOENT", "ENODEV", "EOPNOTSUPP"]


def test_held_fds_of_an_unregistered_table_give_enoent():
    results = run(f"link_add p1 d0\nf1 = open p1 {CONF}/d0/forwarding rw=1\nf2 = open p1 {CONF}/d0\n"
                  f"read p1 f1\nwrite p1 f1 1\nlink_del p1 d0\nread p1 f1\nwrite p1 f1 0\ngetdents p1 f2\n"
                  f"f3 = open p1 {CONF}/lo/forwarding\nwrite p1 f3 1\n")
    assert results == ["ok", "ok", "ok", "ok:*", "ok", "ok", "ENOENT", "ENOENT", "ENOENT", "ok", "EBADF"]


def test_rename_is_unregister_then_register():
    results = run(f"link_add p1 d0\nf1 = open p1 {CONF}/d0/mtu\nchdir p1 {CONF}/d0\nlink_rename p1 d0 d1\n"
                  f"read p1 f1\nlookup p1 mtu\nreaddir p1 {CONF}\nf2 = open p1 {CONF}/d1/mtu\nread p1 f2\n"
                  f"link_up p1 d1\nlink_rename p1 d1 d2\nlink_rename p1 d1 lo\nlink_down p1 d1\n"
                  f"link_rename p1 d1 lo\nlink_rename p1 d9 d2\n")
    assert results == ["ok", "ok", "ok", "ok", "ENOENT", "ENOENT", "ok:all,d1,default,lo", "ok", "ok:*",
                       "ok", "EBUSY", "EBUSY", "ok", "EEXIST", "ENODEV"]


def test_the_readers_namespace_decides_what_proc_sys_net_shows():
    results = run(f"p2 = spawn p1\nunshare_net p2\nlink_add p1 d0\nlink_add p2 d0\nlink_add p2 d1\n"
                  f"readdir p1 {CONF}\nreaddir p2 {CONF}\nlookup p1 {CONF}/d1\nlookup p2 {CONF}/d1\n"
                  f"lookup p1 {CONF}/d1\nlink_del p2 d0\nlookup p1 {CONF}/d0\nlookup p2 {CONF}/d0\n")
    assert results[5:] == ["ok:all,d0,default,lo", "ok:all,d0,d1,default,lo", "ENOENT", "ok:dir", "ENOENT",
                           "ok", "ok:dir", "ENOENT"]


def test_move_to_another_namespace():
    results = run(f"p2 = spawn p1\nunshare_net p2\nlink_add p1 d0\nf1 = open p1 {CONF}/d0/mtu\n"
                  f"link_set_netns p1 d0 p2\nread p1 f1\nlookup p1 {CONF}/d0\nlookup p2 {CONF}/d0\n"
                  f"link_add p1 d0\nlink_set_netns p1 d0 p2\nlink_set_netns p1 lo p2\nlink_set_netns p1 d0 p1\n")
    assert results[4:] == ["ok", "ENOENT", "ENOENT", "ok:dir", "ok", "EEXIST", "EINVAL", "ok"]


def test_a_veth_pair_dies_together_across_namespaces():
    results = run(f"p2 = spawn p1\nunshare_net p2\nlink_add p2 v0 kind=veth peer=v1 peer_in=p1\n"
                  f"readdir p1 {CONF}\nlink_del p1 v1\nreaddir p1 {CONF}\nreaddir p2 {CONF}\n"
                  f"link_add p1 v0 kind=veth peer=v0\n")
    assert results[2:] == ["ok", "ok:all,default,lo,v1", "ok", "ok:all,default,lo", "ok:all,default,lo", "EEXIST"]


def test_setns_and_threads_have_their_own_namespace():
    results = run(f"t1 = spawn_thread p1\nunshare_net t1\nlink_add t1 d0\nlookup p1 {CONF}/d0\n"
                  f"lookup t1 {CONF}/d0\np2 = spawn t1\nlookup p2 {CONF}/d0\nsetns_net p1 p2\n"
                  f"lookup p1 {CONF}/d0\n")
    assert results[2:] == ["ok", "ENOENT", "ok:dir", "ok:3", "ok:dir", "ok", "ok:dir"]


def test_a_namespace_without_tasks_may_already_be_cleaned_up():
    # cleanup_net runs in a workqueue: until then the dying namespace's tables are still there.
    results = run(f"p2 = spawn p1\nunshare_net p2\nlink_add p2 d0\nlink_add p2 v0 kind=veth peer=v1 peer_in=p1\n"
                  f"f1 = open p2 {CONF}/d0/mtu\np3 = spawn p2\nsetns_net p3 p1\nexit p2\nread p3 f1\n"
                  f"lookup p1 {CONF}/v1\nlookup p1 {CONF}/lo\n")
    assert results[8:] == ["ok:* | ENOENT", "*", "ok:dir"]


def test_every_write_checks_the_writer_not_the_open_mode():
    results = run(f"f1 = open p1 {CONF}/lo/forwarding rw=1\nsetuid p1 1000\nwrite p1 f1 1\nread p1 f1\n")
    assert results[2:] == ["EPERM", "ok:*"]


def test_the_sandbox_namespace_dies_when_its_only_task_leaves_it():
    """Found on stock 6.1 by a control campaign: p1 alone in the sandbox's first namespace
    leaves it by unshare_net, so cleanup_net unregisters its tables (an open sysctl file does
    not pin the namespace) and a later read of a file held from it may answer ENOENT."""
    results = run(f"f1 = open p1 {CONF}/lo/forwarding rw=1\nunshare_net p1\nread p1 f1\n")
    assert results[2:] == ["ok:* | ENOENT"]


@pytest.mark.parametrize("op", ["unshare_net p2", "link_add p2 d0", "link_del p2 lo", "setns_net p2 p1"])
def test_network_changes_need_root(op):
    assert run(f"p2 = spawn p1\nsetuid p2 1000\n{op}\n")[-1] == "EPERM"


def test_setns_to_a_dead_task_is_enoent():
    assert run("p2 = spawn p1\nexit p2\nsetns_net p1 p2\n")[-1] == "ENOENT"


def test_renaming_an_up_device_depends_on_the_kernel_version():
    newer = KernelProfile.from_json({**PROFILE.to_json(), "release": "6.12.117+deb12-cloud-amd64"})
    program = parse_text("link_add p1 d0\nlink_up p1 d0\nlink_rename p1 d0 d1\n")
    assert ModelTarget(PROFILE).run(program).results[-1] == "EBUSY"      # release "test": before 6.2
    assert ModelTarget(newer).run(program).results[-1] == "ok"
    assert newer.version == (6, 12) and KernelProfile.from_json({**PROFILE.to_json(), "release": "6.1.0-50-cloud-amd64"}).version == (6, 1)


def test_a_table_directory_is_replaced_when_its_last_entry_goes():
    results = run(f"chdir p1 {{m1}}/sys/net/ipv4/neigh\nf1 = open p1 {CONF}\nlink_rename p1 lo d1\n"
                  f"getdents p1 cwd\ngetdents p1 f1\nreaddir p1 {{m1}}/sys/net/ipv4/neigh\n")
    assert results[3:] == ["ENOENT", "ok:all,d1,default", "ok:d1"]


def test_pwrite_on_seq_files_is_espipe():
    results = run("f1 = open p1 {m1}/{p1}/status\nwrite p1 f1 1\nf2 = open p1 {m1}/{p1}\nwrite p1 f2 1\n")
    assert results[1::2] == ["ESPIPE", "EBADF"]


def test_proc_pid_net_follows_that_tasks_namespace():
    profile = KernelProfile.from_json({**PROFILE.to_json(), "tgid": {"net": "dir", "task": "dir"},
                                       "pid_net": {"dev": "reg", "dev_snmp6": "dir"}})
    program = parse_text("m1 = mount_proc p1\np2 = spawn p1\nt1 = spawn_thread p2\nunshare_net t1\n"
                         "link_add t1 d0\nreaddir p1 {m1}/{p2}/net/dev_snmp6\nreaddir p1 {m1}/{t1}/net/dev_snmp6\n"
                         "f1 = open p1 {m1}/{t1}/net/dev_snmp6\nlink_rename t1 d0 d1\ngetdents p1 f1\n"
                         "lookup p1 {m1}/{t1}/net/dev_snmp6/d0\nexit p2\nreaddir p1 {m1}/{p2}/net\n"
                         "lookup p1 {m1}/{p2}/net/dev\n")
    results = ModelTarget(profile).run(program).results
    assert results[5:] == ("ok:lo", "ok:d0,lo", "ok", "ok", "ok:d1,lo", "ENOENT", "ok", "EINVAL", "ENOENT")
