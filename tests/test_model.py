"""Reference model semantics, one behaviour at a time, with expectations from fs/proc."""


from reference.model import UNMODELLED
from reference.profile import KernelProfile
from reference.program import parse_text
from reference.trace import fnv1a64
from targets.model_target import ModelTarget

PROFILE = KernelProfile.from_json({
    "release": "test",
    "root": {"meminfo": "reg", "sys": "dir", "mounts": "lnk", "self": "lnk", "thread-self": "lnk"},
    "root_links": {"mounts": "self/mounts"},
    "tgid": {"status": "reg", "comm": "reg", "cmdline": "reg", "task": "dir", "fd": "dir",
             "cwd": "lnk", "exe": "lnk", "root": "lnk", "mounts": "reg", "ns": "dir"},
    "tid": {"status": "reg", "comm": "reg", "fd": "dir", "cwd": "lnk"},
})
TGID_LISTING = "ok:cmdline,comm,cwd,exe,fd,mounts,ns,root,status,task"


def run(text):
    """Results of a program, one per non-empty line."""
    program = parse_text(text)
    trace = ModelTarget(PROFILE).run(program)
    assert trace.outcome == "ok", trace.title
    return list(trace.results)


def last(text):
    return run(text)[-1]


def test_pids_are_sequential_in_a_fresh_namespace_threads_included():
    assert run("p2 = spawn p1\nt1 = spawn_thread p2\np3 = spawn p1\np4 = spawn p3 newpid=1\n"
               "p5 = spawn p4\n") == ["ok:2", "ok:3", "ok:4", "ok:5.1", "ok:6.2"]


def test_root_lists_static_names_self_and_thread_group_leaders_only():
    assert last("m1 = mount_proc p1\np2 = spawn p1\nt1 = spawn_thread p2\nreaddir p1 {m1}\n") == \
        "ok:1,2,meminfo,mounts,self,sys,thread-self"


def test_a_thread_id_is_looked_up_but_not_listed():
    results = run("m1 = mount_proc p1\np2 = spawn p1\nt1 = spawn_thread p2\n"
                  "lookup p1 {m1}/{t1}\nreaddir p1 {m1}/{t1}\nreaddir p1 {m1}/{t1}/task\n")
    assert results[3:] == ["ok:dir", TGID_LISTING, "ok:2,3"]


def test_zombie_stays_visible_until_reaped():
    results = run("m1 = mount_proc p1\np2 = spawn p1\nexit p2\nlookup p1 {m1}/{p2}\n"
                  "readdir p1 {m1}/{p2}/task\nreap p1 p2\nlookup p1 {m1}/{p2}\nreap p1 p2\n")
    assert results[2:] == ["ok", "ok:dir", "ok:2", "ok", "ENOENT", "ECHILD"]


def test_reap_of_a_live_child_and_of_a_stranger():
    assert run("p2 = spawn p1\np3 = spawn p2\nreap p1 p2\nreap p1 p3\n")[2:] == ["ok:alive", "ECHILD"]


def test_exited_actor_is_dead():
    assert run("p2 = spawn p1\nexit p2\nt1 = spawn_thread p2\n")[2] == "dead"


def test_thread_exit_removes_task_entry_at_once():
    results = run("m1 = mount_proc p1\np2 = spawn p1\nt1 = spawn_thread p2\nexit t1\n"
                  "lookup p1 {m1}/{p2}/task/{t1}\nlookup p1 {m1}/{t1}\nreaddir p1 {m1}/{p2}/task\n")
    assert results[3:] == ["ok", "ENOENT", "ENOENT", "ok:2"]


def test_exec_from_non_leader_thread_takes_over_the_tgid():
    results = run("m1 = mount_proc p1\np2 = spawn p1\nt1 = spawn_thread p2\nt2 = spawn_thread p2\n"
                  "f1 = open p1 {m1}/{p2}/comm\nread p1 f1\nexec t1\nread p1 f1\n"
                  "readdir p1 {m1}/{p2}/task\nlookup p1 {m1}/{p2}/task/{t1}\nlookup p1 {m1}/{t2}\n"
                  "lookup t1 {m1}\nlookup p2 {m1}\n")
    assert results[5] == "ok:3:" + fnv1a64(b"p2\n")
    assert results[7] == "ok:6:" + fnv1a64(b"agent\n")   # same pid, now the exec'ing task
    assert results[8:] == ["ok:2", "ENOENT", "ENOENT", "dead", "ok:dir"]


def test_held_fd_on_a_released_task_reads_esrch_but_zombie_reads_fine():
    results = run("m1 = mount_proc p1\np2 = spawn p1\nf1 = open p1 {m1}/{p2}/comm\n"
                  "f2 = open p1 {m1}/{p2}/cmdline\nexit p2\nread p1 f1\nread p1 f2\nreap p1 p2\n"
                  "read p1 f1\ngetdents p1 f1\n")
    assert results[5].startswith("ok:3:")
    assert results[6] == "ok:0:cbf29ce484222325"
    assert results[8:] == ["ESRCH", "ENOTDIR"]


def test_held_directory_fds_after_release():
    results = run("m1 = mount_proc p1\np2 = spawn p1\nf1 = open p1 {m1}/{p2}\n"
                  "f2 = open p1 {m1}/{p2}/task\nf3 = open p1 {m1}\nexit p2\nreap p1 p2\n"
                  "getdents p1 f1\ngetdents p1 f2\ngetdents p1 f3\nread p1 f1\n")
    assert results[7:] == ["ENOENT", "ENOENT", "ok:1,meminfo,mounts,self,sys,thread-self", "EISDIR"]


def test_cwd_in_a_dead_pid_directory():
    results = run("m1 = mount_proc p1\np2 = spawn p1\np3 = spawn p1\nchdir p3 {m1}/{p2}\n"
                  "getdents p3 cwd\nlookup p3 status\nreadlink p3 {m1}/{p3}/cwd\nexit p2\nreap p1 p2\n"
                  "getdents p3 cwd\nlookup p3 status\nlookup p3 .\nreadlink p3 {m1}/{p3}/cwd\n")
    assert results[4:7] == [TGID_LISTING, "ok:reg", "ok:/mnt/m1/2"]
    assert results[9:] == ["ESRCH", "ESRCH", "ESRCH", "ok:/mnt/m1/2 (deleted)"]


def test_hidepid_invisible_hides_other_uids_from_non_root():
    program = ("m1 = mount_proc p1 hidepid=invisible\np2 = spawn p1\np3 = spawn p1\n"
               "setgid p3 1000\nsetuid p3 1000\nsetgid p2 2000\nsetuid p2 2000\n"
               "readdir p3 {m1}\nlookup p3 {m1}/{p2}\nlookup p3 {m1}/{p2}/status\n"
               "lookup p3 {m1}/{p3}/status\nreaddir p1 {m1}\n")
    results = run(program)
    assert results[7] == "ok:3,meminfo,mounts,self,sys,thread-self"
    assert results[8:] == ["ENOENT", "ENOENT", "ok:reg", "ok:1,2,3,meminfo,mounts,self,sys,thread-self"]


def test_hidepid_noaccess_lists_but_refuses_entry():
    results = run("m1 = mount_proc p1 hidepid=noaccess\np2 = spawn p1\nsetgid p2 1000\nsetuid p2 1000\n"
                  "readdir p2 {m1}\nlookup p2 {m1}/{p1}\nlookup p2 {m1}/{p1}/status\n")
    assert results[4:] == ["ok:1,2,meminfo,mounts,self,sys,thread-self", "ok:dir", "EPERM"]


def test_hidepid_gid_zero_sees_everything():
    results = run("m1 = mount_proc p1 hidepid=invisible\np2 = spawn p1\nsetuid p2 1000\nreaddir p2 {m1}\n")
    assert results[3].startswith("ok:1,2,")


def test_same_uid_but_non_dumpable_is_hidden_until_exec():
    # setuid makes the mm non-dumpable (commit_creds); __ptrace_may_access then refuses a
    # same-uid reader without CAP_SYS_PTRACE; exec restores SUID_DUMP_USER.
    prefix = ("m1 = mount_proc p1 hidepid=ptraceable\np2 = spawn p1\nsetgid p2 1000\nsetuid p2 1000\n"
              "p3 = spawn p2\n")
    assert run(prefix + "lookup p3 {m1}/{p2}\n")[-1] == "ENOENT"
    assert run(prefix + "exec p2\nexec p3\nlookup p3 {m1}/{p2}\n")[-1] == "ok:dir"


def test_setuid_drops_capabilities():
    assert run("p2 = spawn p1\nsetuid p2 1000\nsetuid p2 0\nm1 = mount_proc p2\n")[2:] == ["EPERM", "EPERM"]


def test_subset_pid_hides_non_pid_entries():
    results = run("m1 = mount_proc p1 subset=pid\nreaddir p1 {m1}\nlookup p1 {m1}/meminfo\n"
                  "lookup p1 {m1}/self\nlookup p1 {m1}/{p1}/status\n")
    assert results[1:] == ["ok:1,self,thread-self", "ENOENT", "ok:lnk", "ok:reg"]


def test_self_and_thread_self_follow_the_mounts_namespace():
    results = run("m1 = mount_proc p1\np2 = spawn p1 newpid=1\nm2 = mount_proc p2\nt1 = spawn_thread p2\n"
                  "readlink p2 {m1}/self\nreadlink p2 {m2}/self\nreadlink t1 {m1}/thread-self\n"
                  "readlink t1 {m2}/thread-self\nreadlink p1 {m2}/self\nlookup p1 {m2}/{p1}\n")
    assert results[4:] == ["ok:2", "ok:1", "ok:2/task/3", "ok:1/task/2", "ENOENT", "ENOENT"]


def test_init_death_kills_the_namespace():
    results = run("m1 = mount_proc p1\np2 = spawn p1 newpid=1\np3 = spawn p2\np4 = spawn p3 newpid=1\n"
                  "exit p2\nreaddir p1 {m1}\nlookup p3 {m1}\nreap p1 p2\nreaddir p1 {m1}\n")
    assert results[5:] == ["ok:1,2,meminfo,mounts,self,sys,thread-self", "dead", "ok",
                           "ok:1,meminfo,mounts,self,sys,thread-self"]


def test_orphans_are_reparented_to_the_namespace_init():
    results = run("p2 = spawn p1\np3 = spawn p2\nexit p2\nexit p3\nreap p1 p3\nreap p1 p2\n")
    assert results[4:] == ["ok", "ok"]


def test_umount_busy_lazy_and_after():
    results = run("m1 = mount_proc p1\np2 = spawn p1\nf1 = open p2 {m1}/{p2}/status\numount p1 m1\n"
                  "umount p1 m1 lazy=1\nlookup p1 {m1}/{p2}\nreaddir p1 {m1}\nread p2 f1\n"
                  "readlink p2 {m1}/self\numount p1 m1\n")
    assert results[3:] == ["EBUSY", "ok", "ENOENT", "ok:", UNMODELLED, "ENOENT", "EINVAL"]


def test_fd_links_follow_the_files_table():
    results = run("m1 = mount_proc p1\nf1 = open p1 {m1}/meminfo\np2 = spawn p1\nclose p1 f1\n"
                  "lookup p1 {m1}/{p1}/fd/{f1}\nlookup p1 {m1}/{p2}/fd/{f1}\nreadlink p1 {m1}/{p2}/fd/{f1}\n"
                  "close p1 f1\n")
    assert results[4:] == ["ENOENT", "ok:lnk", "ok:/mnt/m1/meminfo", "EBADF"]


def test_unmodelled_results_are_explicit():
    assert last("m1 = mount_proc p1\nreaddir p1 {m1}/sys\n") == UNMODELLED
    assert last("lookup p1 bin/sh\n") == UNMODELLED      # below the sandbox's / is not modelled


def test_model_bug_is_reported_not_raised():
    from reference import model

    class BrokenLookup(model.Kernel):
        def op_lookup(self, actor, op):
            return 1 / 0
    trace = ModelTarget(PROFILE, BrokenLookup).run(parse_text("lookup p1 x\n"))
    assert trace.outcome == "error" and "ZeroDivisionError" in trace.title


def test_hidepid_ptraceable_walk_depends_on_the_dcache():
    # Uncached: proc_pid_lookup hides the task (ENOENT); cached: pid_revalidate keeps the
    # dentry and proc_pid_permission says EPERM.  On a fresh mount nothing can be cached; once
    # p1 looked itself up, both are allowed; lstat is ENOENT either way.
    results = run("m1 = mount_proc p1 hidepid=ptraceable\np2 = spawn p1\nsetgid p2 1000\nsetuid p2 1000\n"
                  "lookup p2 {m1}/{p1}\nlookup p2 {m1}/{p1}/status\nreaddir p2 {m1}/{p1}\n"
                  "lookup p1 {m1}/{p1}/status\nlookup p2 {m1}/{p1}\nlookup p2 {m1}/{p1}/status\n"
                  "readdir p2 {m1}/{p1}\n")
    assert results[4:] == ["ENOENT", "ENOENT", "ENOENT", "ok:reg", "ENOENT", "ENOENT | EPERM",
                           "ENOENT | EPERM"]


def test_zombie_keeps_its_dumpability():
    # task_still_dumpable: an exited task answers with the user_dumpable exit_mm recorded.
    results = run("m1 = mount_proc p1 hidepid=invisible\nsetgid p1 1000\nsetuid p1 1000\np2 = spawn p1\n"
                  "lookup p1 {m1}/{p2}\nexit p2\nlookup p1 {m1}/{p2}\n")
    assert results[4:] == ["ENOENT", "ok", "ENOENT"]


def test_new_pid_namespace_needs_cap_sys_admin():
    results = run("p2 = spawn p1\nsetuid p2 1000\np3 = spawn p2 newpid=1\nlookup p3 .\n")
    assert results[2:] == ["EPERM", "dead"]


def test_an_unmodelled_open_makes_the_fd_unknown_not_guessed():
    results = run("m1 = mount_proc p1\nf1 = open p1 {m1}/{p1}/mounts rw=1\nread p1 f1\nclose p1 f1\nclose p1 f1\n")
    assert results[1:] == [UNMODELLED, UNMODELLED, UNMODELLED, "EBADF"]


def test_a_held_auxv_fd_reads_its_pinned_mm_after_the_task_is_gone():
    # auxv_read reads the mm pinned at open (proc_mem_open); status goes through the task
    from targets.kernels import load_profile
    program = parse_text("m1 = mount_proc p1\nt1 = spawn_thread p1\nf1 = open p1 {m1}/{t1}/auxv\n"
                         "f2 = open p1 {m1}/{t1}/status\nexit t1\nread p1 f1\nread p1 f2\n")
    assert ModelTarget(load_profile()).run(program).results[-2:] == (UNMODELLED, "ESRCH")
