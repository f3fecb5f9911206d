"""Exact predictions for what used to be `*`: the fdinfo directory, walks through the exe, cwd,
root and fd/N links of /proc/<pid>, and paths relative to a cwd outside /proc."""

from dataclasses import replace

from reference.model import UNMODELLED
from reference.program import parse_text
from reference.trace import fnv1a64
from targets.model_target import ModelTarget
from tests.test_model import PROFILE

ROOTFS = "ok:agent,bin,dev,init,lib,mnt,proc,root,sys,tmp"
PROFILE_6_1 = replace(PROFILE, release="6.1.0-50-cloud-amd64",
                      package="linux-image-6.1.0-50-cloud-amd64-unsigned=6.1.176-1",
                      tgid={**PROFILE.tgid, "fdinfo": "dir"})
PROFILE_6_12 = replace(PROFILE, release="6.12.117+deb12-cloud-amd64",
                       package="linux-image-6.12.117+deb12-cloud-amd64-unsigned=6.12.117-1~deb12u1",
                       tgid={**PROFILE.tgid, "fdinfo": "dir"})


def run(text, profile=PROFILE):
    trace = ModelTarget(profile).run(parse_text(text))
    assert trace.outcome == "ok", trace.title
    return list(trace.results)


FDINFO = ("m1 = mount_proc p1\nt1 = spawn_thread p1\nchdir p1 {m1}/{t1}/fdinfo\nexit t1\n"
          "f1 = open p1 .\nlookup p1 .\nlookup p1 0\ngetdents p1 cwd\n"
          "p2 = spawn p1\nsetgid p2 1000\nsetuid p2 1000\nreaddir p2 {m1}/{p1}/fdinfo\n"
          "lookup p2 {m1}/{p1}/fdinfo/0\nexit p2\nreaddir p1 {m1}/{p2}/fdinfo\n")


def test_fdinfo_of_a_dead_task_6_12_checks_at_every_walk():
    # proc_fdinfo_permission is the directory's .permission: ESRCH without a task, EACCES
    # without ptrace access, whether the walk ends there or goes through.
    results = run(FDINFO, PROFILE_6_12)
    assert results[4:8] == ["ESRCH", "ESRCH", "ESRCH", "ESRCH"]
    assert results[11:] == ["EACCES", "EACCES", "ok", "ok:"]


def test_fdinfo_of_a_dead_task_6_1_176_checks_at_open_only():
    # proc_open_fdinfo: the same checks, at open only (the .permission came with 6.1.180).
    results = run(FDINFO, PROFILE_6_1)
    assert results[4:8] == ["ESRCH", "ok:dir", "ENOENT", "ESRCH"]
    assert results[11:] == ["EACCES", "ok:reg", "ok", "ok:"]


def test_relative_paths_before_any_chdir_start_at_the_sandbox_root():
    results = run("readdir p1 .\nlookup p1 .\nlookup p1 status\nreadlink p1 .\ngetdents p1 cwd\n"
                  "f1 = open p1 .\ngetdents p1 f1\np2 = spawn p1\nlookup p2 fd\nlookup p1 bin\n")
    assert results == [ROOTFS, "ok:dir", "ENOENT", "EINVAL", ROOTFS, "ok", ROOTFS, "ok:2", "ENOENT",
                       UNMODELLED]


def test_walks_through_root_exe_cwd_and_fd_links():
    results = run("m1 = mount_proc p1\np2 = spawn p1\nreaddir p1 {m1}/{p2}/root\nreaddir p1 {m1}/{p2}/exe\n"
                  "f1 = open p1 {m1}/{p2}/exe\nread p1 f1\nf2 = open p2 {m1}/{p2}/fd/0\nread p2 f2\n"
                  "readlink p1 {m1}/{p2}/fd/{f2}\nreaddir p1 {m1}/{p2}/fd/{f2}\nreaddir p1 {m1}/{p2}/cwd\n"
                  "f3 = open p1 {m1}/{p2}/task\nreaddir p1 {m1}/{p1}/fd/{f3}\nchdir p2 {m1}/{p2}/root\n"
                  "chdir p1 {m1}/{p2}/exe\nreadlink p1 {m1}/{p2}/cwd\nchdir p2 {m1}/{p1}/fd/{f3}\n"
                  "lookup p2 {m1}/{p2}/cwd/{p2}\n")
    assert results[2:] == [ROOTFS, "ENOTDIR", "ok", UNMODELLED, "ok", "ok:0:" + fnv1a64(b""),
                           "ok:/dev/null", "ENOTDIR", ROOTFS, "ok", "ok:2", "ok", "ENOTDIR", "ok:/", "ok",
                           "ok:dir"]


def test_link_walks_check_ptrace_then_the_tasks_state():
    # call_proc_get_link: PTRACE_MODE_READ_FSCREDS (EACCES), then no fs/mm/files after exit (ENOENT).
    results = run("m1 = mount_proc p1\np2 = spawn p1\nf1 = open p2 {m1}/{p2}\np3 = spawn p1\n"
                  "setgid p3 1000\nsetuid p3 1000\nreaddir p3 {m1}/{p1}/root\nreaddir p3 {m1}/{p2}/fd/{f1}\n"
                  "readdir p3 {m1}/{p3}/cwd\nexit p2\nreaddir p1 {m1}/{p2}/root\nreaddir p1 {m1}/{p2}/exe\n"
                  "readdir p1 {m1}/{p2}/fd/{f1}\nreaddir p1 {m1}/{p2}/cwd\n")
    assert results[6:] == ["EACCES", "EACCES", ROOTFS, "ok", "ENOENT", "ENOENT", "ENOENT", "ENOENT"]


def test_fd_listing_of_a_live_process_follows_the_agents_fd_layout():
    results = run("m1 = mount_proc p1\nreaddir p1 {m1}/{p1}/fd\np2 = spawn p1\nt1 = spawn_thread p2\n"
                  "f1 = open p2 {m1}/{p2}/fd\nreaddir p1 {m1}/{p2}/fd\nreaddir t1 {m1}/{p2}/fd\n"
                  "getdents p2 f1\nexit t1\nreaddir p1 {m1}/{p2}/fd\nt2 = spawn_thread p2\nexec t2\n"
                  "readdir p1 {m1}/{p2}/fd\nf2 = open p2 {m1}/{p2}/mounts rw=1\nreaddir p1 {m1}/{p2}/fd\n",
                  PROFILE_6_12)
    assert results[1] == "ok:0,1,2,3,4"
    assert results[5:8] == ["ok:0,1,101,2,201,3", "ok:0,1,101,2,201,3,4", "ok:0,1,101,2,201,3"]
    assert results[9] == "ok:0,1,101,2,3"
    assert results[12] == "ok:0,1,101,2,3"
    assert results[13:] == [UNMODELLED, UNMODELLED]     # whether f2 is open is not known


def test_root_opens_per_pid_files_of_a_live_task_only():
    results = run("m1 = mount_proc p1\np2 = spawn p1\nf1 = open p1 {m1}/{p2}/mounts\np3 = spawn p1\n"
                  "setgid p3 1000\nsetuid p3 1000\nf2 = open p3 {m1}/{p3}/mounts\nexit p2\n"
                  "f3 = open p1 {m1}/{p2}/mounts\n")
    assert [results[2], results[6], results[8]] == ["ok", UNMODELLED, UNMODELLED]
