"""hidepid=ptraceable: EPERM only where a dentry for the hidden pid can exist in that mount."""

from reference.program import parse_text
from targets.model_target import ModelTarget
from tests.test_model import PROFILE

HIDDEN = ("m1 = mount_proc p1 hidepid=ptraceable\np2 = spawn p1\np3 = spawn p1\n"
          "setgid p2 1000\nsetuid p2 1000\n")


def run(text):
    trace = ModelTarget(PROFILE).run(parse_text(HIDDEN + text))
    assert trace.outcome == "ok", trace.title
    return list(trace.results[5:])


def test_a_fresh_mount_has_no_dentry_to_find():
    assert run("lookup p2 {m1}/{p3}/status\nreaddir p2 {m1}/{p3}\nreadlink p2 {m1}/{p3}\n"
               "lookup p2 {m1}/{p3}\n") == ["ENOENT"] * 4


def test_a_readdir_of_the_root_may_leave_dentries_behind():
    # proc_pid_readdir -> proc_fill_cache instantiates a dentry for every pid it lists.
    assert run("readdir p1 {m1}\nlookup p2 {m1}/{p3}/status\nreaddir p2 {m1}/{p3}\nreadlink p2 {m1}/{p3}\n"
               "lookup p2 {m1}/{p3}\n")[1:] == ["ENOENT | EPERM", "ENOENT | EPERM", "ENOENT | EINVAL", "ENOENT"]


def test_a_held_fd_or_cwd_pins_the_dentry():
    assert run("f1 = open p1 {m1}/{p3}/status\nchdir p1 {m1}/{p1}/task\ndrop_caches\n"
               "lookup p2 {m1}/{p3}/status\nreadlink p2 {m1}/{p3}\nreaddir p2 {m1}/{p1}\n"
               "close p1 f1\nlookup p2 {m1}/{p3}/status\n")[3:] == ["EPERM", "EINVAL", "EPERM", "ok",
                                                                   "ENOENT | EPERM"]


def test_each_mount_has_its_own_dentries():
    assert run("lookup p1 {m1}/{p3}\nm2 = mount_proc p1 hidepid=ptraceable\nlookup p2 {m2}/{p3}/status\n"
               "lookup p2 {m1}/{p3}/status\n")[2:] == ["ENOENT", "ENOENT | EPERM"]


def test_an_unmodelled_walk_may_have_looked_anything_up():
    assert run("f1 = open p1 {m1}/{p1}/mounts rw=1\nlookup p2 {m1}/{p3}/status\n") == ["*", "ENOENT | EPERM"]
