"""conf/<entry>/forwarding: what was written is what a later read returns, per namespace and
device, with the propagation of devinet_sysctl_forward and addrconf_fixup_forwarding."""

from reference.program import parse_text
from reference.trace import fnv1a64
from targets.model_target import ModelTarget
from tests.test_sysctl_model import PROFILE

ZERO, ONE = "ok:2:" + fnv1a64(b"0\n"), "ok:2:" + fnv1a64(b"1\n")


def run(text):
    trace = ModelTarget(PROFILE).run(parse_text("m1 = mount_proc p1\n" + text))
    assert trace.outcome == "ok", trace.title
    return list(trace.results[1:])


def fw(proto, entry):
    return "{m1}/sys/net/" + proto + "/conf/" + entry + "/forwarding"


def test_ipv6_values_of_a_fresh_namespace_are_compiled_ipv4_ones_come_from_init_net():
    results = run(f"link_add p1 d0\nf1 = open p1 {fw('ipv6', 'd0')}\nf2 = open p1 {fw('ipv6', 'all')}\n"
                  f"f3 = open p1 {fw('ipv4', 'lo')}\nread p1 f1\nread p1 f2\nread p1 f3\n")
    assert results[4:] == [ZERO, ZERO, "ok:*"]


def test_ipv6_all_sets_default_and_every_device_changed_or_not():
    results = run(f"link_add p1 d0\nf1 = open p1 {fw('ipv6', 'd0')} rw=1\nf2 = open p1 {fw('ipv6', 'all')} rw=1\n"
                  f"f3 = open p1 {fw('ipv6', 'default')} rw=1\nwrite p1 f1 1\nwrite p1 f3 1\nread p1 f1\n"
                  f"write p1 f2 0\nread p1 f1\nread p1 f3\nlink_add p1 d1\nf4 = open p1 {fw('ipv6', 'd1')}\n"
                  "read p1 f4\n")
    assert results[4:] == ["ok", "ok", ONE, "ok", ZERO, ZERO, "ok", "ok", ZERO]


def test_ipv4_all_propagates_only_a_change():
    # the old value of conf/all is unknown (init_net's): a device may or may not follow
    results = run(f"link_add p1 d0\nf1 = open p1 {fw('ipv4', 'd0')} rw=1\nf2 = open p1 {fw('ipv4', 'all')} rw=1\n"
                  f"write p1 f1 1\nwrite p1 f2 1\nread p1 f1\nf3 = open p1 {fw('ipv4', 'lo')}\nread p1 f3\n"
                  "write p1 f2 0\nread p1 f1\nread p1 f3\nwrite p1 f1 1\nwrite p1 f2 0\nread p1 f1\n")
    assert results[3:] == ["ok", "ok", ONE, "ok", "ok:*", "ok", ZERO, ZERO, "ok", "ok", ONE]


def test_a_new_device_copies_default_a_rename_keeps_its_value_a_move_takes_the_new_default():
    results = run(f"f1 = open p1 {fw('ipv6', 'default')} rw=1\nwrite p1 f1 1\nlink_add p1 d0\n"
                  f"link_rename p1 d0 d1\nf2 = open p1 {fw('ipv6', 'd1')}\nread p1 f2\np2 = spawn p1\n"
                  f"unshare_net p2\nlink_set_netns p1 d1 p2\nf3 = open p2 {fw('ipv6', 'd1')}\nread p2 f3\n"
                  "read p1 f2\n")
    assert results[5:] == [ONE, "ok:2", "ok", "ok", "ok", ZERO, "ENOENT"]


def test_a_refused_or_unfollowed_write_leaves_values_alone_or_unknown():
    results = run(f"f1 = open p1 {fw('ipv6', 'lo')} rw=1\nf2 = open p1 {{m1}}/sys/net/ipv4/ip_forward rw=1\n"
                  "write p1 f2 1\nread p1 f1\np2 = spawn p1\nsetuid p2 1000\nwrite p2 f1 1\nread p2 f1\n")
    assert results[2:] == ["*", "ok:*", "ok:2", "ok", "EPERM", "ok:*"]


def test_mtu_and_arp_retrans_time_are_constants_ipv6_retrans_time_depends_on_hz():
    def value(text):
        return "ok:" + str(len(text) + 1) + ":" + fnv1a64((text + "\n").encode())
    results = run("link_add p1 d0\nf1 = open p1 {m1}/sys/net/ipv6/conf/lo/mtu\n"
                  "f2 = open p1 {m1}/sys/net/ipv6/conf/d0/mtu\nf3 = open p1 {m1}/sys/net/ipv6/conf/all/mtu\n"
                  "f4 = open p1 {m1}/sys/net/ipv4/neigh/d0/retrans_time\n"
                  "f5 = open p1 {m1}/sys/net/ipv6/neigh/d0/retrans_time\n"
                  "read p1 f1\nread p1 f2\nread p1 f3\nread p1 f4\nread p1 f5\n"
                  "f6 = open p1 {m1}/sys/net/ipv6/conf/d0/mtu rw=1\nwrite p1 f6 1\nread p1 f2\n")
    assert results[6:11] == [value("65536"), value("1500"), value("1280"), value("100"), "ok:*"]
    assert results[11:] == ["ok", "*", "ok:*"]      # a write the model does not follow


def test_sysctl_leaves_are_0644_for_their_open():
    # proc_sys_permission -> sysctl_perm: net_ctl_permissions gives CAP_NET_ADMIN the owner bits;
    # test_perm: others' bits for a non-root euid and egid
    results = run(f"p2 = spawn p1\nsetgid p2 1000\nsetuid p2 1000\nf1 = open p2 {fw('ipv4', 'lo')} rw=1\n"
                  f"f2 = open p2 {fw('ipv4', 'lo')}\nf3 = open p2 {{m1}}/sys/net/ipv4/neigh/lo/retrans_time rw=1\n"
                  f"write p2 f1 1\nf4 = open p1 {{m1}}/sys/net/ipv6/conf/lo/mtu rw=1\n")
    assert results[3:] == ["EACCES", "ok", "EACCES", "EBADF", "ok"]
