"""Standalone C reproducers: one self-contained C file per program, like syzkaller's.

A reproducer does what the guest agent does for the program, with plain syscalls and nothing of
procfuzz around it: a controller clones the sandbox init p1 into fresh pid/mount/net/ipc/uts
namespaces, every process and thread of the program is a real task obeying commands on its own
socket, and the controller resolves path templates from the pids the tasks report.  Every result
is compared with the model's expected one, embedded in the file.

One source of truth: the reproducer is assembled from the agent's own definitions
(targets/agent/agent.c), taken by name, so it executes each op exactly as the guest agent does
and follows the agent when it changes.  It takes the controller (sandbox, namespaces, templates,
waits), and of the actor side only what the program's op kinds need; the generated parts are the
program (the agent's `struct op` values), the actor's dispatch over the kinds used, and `main`.
Fd numbers, comm names, the mount points /mnt/mN (a tmpfs in a private mount namespace) and the
executable's name /agent are the agent's, because the expected results name them.

An op kind without a recipe makes export fail (ExportError), never a wrong reproducer.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from reference.program import HIDEPID_VALUES, LINK_KINDS, OP_SPECS, SUBSET_VALUES, Op, Program
from reference.state_check import split_state_check
from reference.trace import Trace
from targets.initramfs import AGENT_SOURCE

from fuzz.compare.leaks import RERUNS, tolerance

from .c_templates import ACTOR_AFTER_EXEC, MAIN, MAIN_LEAK, PERFORM


class ExportError(ValueError):
    """The program cannot be exported (an op kind without a recipe, or an agent.c it cannot read)."""


# ---- what to take from agent.c --------------------------------------------------------------------

# The controller side and the actor loop, needed by every reproducer (agent.c names, any order:
# they are emitted in the agent's own order, which declares before use).
CORE = (
    "enum:MAX_OPS OP_DEADLINE_NS TEARDOWN_DEADLINE_NS FLUSH_DEADLINE_NS SANDBOX_FLAGS ERRNO_NAME errno_names put_errno "
    "put_status now_ns pause_briefly struct:text text_add text_str text_printf read_file move_fd "
    "union:fd_cmsg send_msg recv_msg enum:op_kind struct:handle struct:option_spec enum:MAX_OPTS "
    "OPT_HIDEPID struct:op parse_handle parse_template struct:cmd struct:actor send_hello set_comm leave "
    "perform; serve_actor redirect_stdio become_sandbox_init struct:task struct:sandbox task_of "
    "hung_up drop_channel pid_in_ns resolve_path await_msg request await_hello put_spawned start_task ctl_spawn "
    "ctl_spawn_thread await_flush tasklist_barrier poll_until process_exited struct:thread_id thread_exited "
    "drop_threads_of ctl_exit ctl_exec ctl_drop_caches open_netns_of ctl_simple run_op init_sandbox "
    "start_sandbox init_reaped teardown prepare_mount_points").split()

LISTING = ("text_escaped", "compare_names", "put_names", "list_dir")
NETLINK = ("struct:nl_request", "nl_attr", "nl_str", "nl_end", "nl_init", "nl_talk", "nl_index", "act_link")

# Per op kind: the actor's statement (as in the agent's perform) and the definitions it needs.
# A spawn consumes the channel end it was passed; every other passed fd is closed after the op.
ACTOR_RECIPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "spawn": ("act_spawn(self, c, passfd, out, answer);\n\t\tpassfd = -1;",
              ("become_child", "new_pid_ns_for_children", "act_spawn")),
    "spawn_thread": ("act_spawn_thread(c, passfd, out);\n\t\tpassfd = -1;", ("thread_main", "act_spawn_thread")),
    "exit": ("leave(self);", ()),
    "reap": ("act_reap(c->num, out);", ("act_reap",)),
    "exec": ("act_exec(out);", ("self_exe", "act_exec", "actor_main")),
    "setuid": ("put_status(out, setuid(c->num));", ()),
    "setgid": ("put_status(out, setgid(c->num));", ()),
    "mount_proc": ('put_status(out, mount("proc", c->path, "proc", 0, c->data));', ()),
    "umount": ("put_status(out, umount2(c->path, c->num ? MNT_DETACH : 0));", ()),
    "open": ("act_open(c->path, c->num, c->flag, out);", ("act_open",)),
    "close": ("put_status(out, close(c->num));", ()),
    "chdir": ("put_status(out, chdir(c->path));", ()),
    "drop_caches": ("", ()),                        # the controller's own write
    "lookup": ("act_lookup(c->path, out);", ("act_lookup",)),
    "readdir": ("act_readdir(c->path, out);", LISTING + ("act_readdir",)),
    "readlink": ("act_readlink(c->path, out);", ("text_escaped", "act_readlink")),
    "read": ("act_read(c->num, out);", ("fnv1a64", "act_read")),
    "getdents": ("act_getdents(c->num, out);", LISTING + ("act_getdents",)),
    "write": ("act_write(c->num, c->data, out);", ("act_write",)),
    "unshare_net": ("put_status(out, unshare(CLONE_NEWNET));", ()),
    "setns_net": ("act_setns_net(passfd, out);", ("act_setns_net",)),
    **{kind: ("act_link(c, passfd, out);", NETLINK)
       for kind in ("link_add", "link_del", "link_rename", "link_set_netns", "link_up", "link_down")},
}

_NAME_PATTERNS = (
    (re.compile(r"^#define (\w+)"), "{}"),
    (re.compile(r"^(?:struct|union|enum) (\w+) \{"), None),         # struct:name etc.
    (re.compile(r"^enum \{\s*$"), "enum:"),                         # anonymous: by its first constant
    (re.compile(r"^enum \{ (\w+)"), "enum:{}"),
    (re.compile(r"^[^=(]*?(\w+)\s*(?:\[[^\]]*\])?\s*=\s"), "{}"),  # a variable with its initialiser
    (re.compile(r"^[^=]*?(\w+)\((?:[^)]*\))?.*;$"), "{};"),          # a prototype
    (re.compile(r"^[^=]*?(\w+)\("), "{}"),                          # a function
)


@lru_cache(maxsize=4)
def agent_definitions(source: Path = AGENT_SOURCE) -> dict[str, tuple[int, str]]:
    """The top-level definitions of agent.c by name -> (position, text with its comment and
    attribute lines).  Names: functions and variables as in C, `struct:x`, `union:x`, `enum:x`,
    `enum:FIRST` for an anonymous enum, `name;` for a prototype."""
    lines = Path(source).read_text().splitlines()
    found: dict[str, tuple[int, str]] = {}
    index, lead = 0, []
    while index < len(lines):
        line = lines[index]
        if not line or line.startswith("#include") or line == "#define _GNU_SOURCE":
            lead, index = [], index + 1
            continue
        if line.startswith(("/*", " *", "__attribute__")):
            lead.append(line)
            index += 1
            continue
        end = index
        if not line.endswith(";") and not line.startswith("#"):
            while end < len(lines) and lines[end] not in ("}", "};"):
                end += 1
        name = _definition_name(line, lines[index + 1] if index + 1 < len(lines) else "")
        if name:
            found[name] = (index, "\n".join(lead + lines[index:end + 1]) + "\n")
        lead, index = [], end + 1
    return found


def _definition_name(line: str, next_line: str) -> str | None:
    for pattern, form in _NAME_PATTERNS:
        match = pattern.match(line)
        if not match:
            continue
        if form is None:
            keyword = line.split()[0]
            return f"{keyword}:{match.group(1)}"
        if form == "enum:":
            first = re.match(r"\s*(\w+)", next_line)
            return f"enum:{first.group(1)}" if first else None
        return form.format(match.group(1))
    return None


def _agent_code(names: set[str]) -> str:
    definitions = agent_definitions()
    missing = sorted(names - set(definitions))
    if missing:
        raise ExportError(f"{AGENT_SOURCE} has no definition of {', '.join(missing)} (renamed?)")
    source = Path(AGENT_SOURCE).read_text()
    includes = "".join(line + "\n" for line in source.splitlines()
                       if line.startswith("#include") or line == "#define _GNU_SOURCE")
    ordered = sorted(names, key=lambda name: definitions[name][0])
    return includes + "\n" + "\n".join(definitions[name][1] for name in ordered)


# ---- the program as the agent's struct op values ------------------------------------------------

def c_string(text: str) -> str:
    """A C string literal; everything outside printable ASCII (and quotes, backslashes, '?' for
    trigraphs) as fixed-width octal escapes, which cannot swallow a following digit."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        out.append(char if 0x20 <= byte < 0x7f and char not in '"\\?' else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _handle(value: str) -> str:
    return "{ 'f', 0 }" if value == "cwd" else f"{{ '{value[0]}', {int(value[1:])} }}"


# The argument that lands in struct op's `target` (agent.c parse_positional: T, p, m, f, F).
TARGET_ARGUMENT = {"reap": "child", "umount": "mount", "close": "fd", "read": "fd", "getdents": "fd",
                   "write": "fd", "setns_net": "target", "link_set_netns": "target"}


def _op_initialiser(op: Op) -> str:
    """The agent's `struct op` of one op (what its parser would make of the op's text)."""
    spec, args = OP_SPECS[op.kind], dict(op.args)
    fields = [f".kind = OP_{op.kind.upper()}"]
    if op.ret:
        fields.append(f".ret = {_handle(op.ret)}")
    if op.actor:
        fields.append(f".actor = {_handle(op.actor)}")
    if op.kind in TARGET_ARGUMENT:
        fields.append(f".target = {_handle(args[TARGET_ARGUMENT[op.kind]])}")
    if op.kind in ("setuid", "setgid"):
        fields.append(f".id = {args['uid' if op.kind == 'setuid' else 'gid']}")
    choices = []
    for name, _, _ in spec.options:
        if name in ("peer", "peer_in"):
            continue
        allowed = {"hidepid": HIDEPID_VALUES, "subset": SUBSET_VALUES, "kind": LINK_KINDS}.get(name, (0, 1))
        choices.append(str(allowed.index(args[name])))
    if choices:
        fields.append(f".opt = {{ {', '.join(choices)} }}")
    devices = [args[name] for name in ("name", "new") if name in args]
    if devices:
        fields.append(f".ndev = {len(devices)}")
    devices += [args["peer"]] if args.get("peer") else []
    if devices:
        fields.append(f".dev = {{ {', '.join(c_string(d) for d in devices)} }}")
    if args.get("peer_in"):
        fields.append(f".peer_in = {_handle(args['peer_in'])}")
    if "value" in args:
        fields.append(f".value = {c_string(args['value'])}")
    if "path" in args:
        fields.append(f".path = {c_string(args['path'])}")
    return "{ " + ", ".join(fields) + " }"


LEAK_CODE = ("slab_caches", "enum:N_SLAB_CACHES", "write_small", "read_slab_counts",
             "enum:SLAB_SETTLE_ROUNDS", "settle_slab_counts")

def export_c(program: Program, expected: Trace, *, kernel: str, summary: str,
             leaked: tuple[str, ...] = (), leak_runs: int = RERUNS) -> str:
    """The C reproducer of `program`, with the model's `expected` results embedded; or with
    `leaked` slab caches, one that runs the program 1 + `leak_runs` times and reports whether
    they grow at every run.  kernel and summary (what the program shows) go into the comment at
    the top."""
    if expected.outcome != "ok" or len(expected.results) != len(program.ops):
        raise ExportError(f"the model has no complete trace of this program: {expected.title}")
    kinds = sorted({op.kind for op in program.ops}, key=list(OP_SPECS).index)
    unsupported = [kind for kind in kinds if kind not in ACTOR_RECIPES]
    if unsupported:
        raise ExportError(f"export-c does not support the op(s) {', '.join(unsupported)} yet")
    names = set(CORE) | (set(LEAK_CODE) if leaked else set())
    cases = []
    for kind in kinds:
        statement, needs = ACTOR_RECIPES[kind]
        names.update(needs)
        if statement:
            cases.append(f"\tcase OP_{kind.upper()}:\n\t\t{statement}\n\t\tbreak;")
    run_as_agent = "exec" in kinds or any("exe" in dict(op.args).get("path", "") for op in program.ops)
    program_table = (
        f"\n/* ---- the program ---- */\n\nenum {{ N_OPS = {len(program)} }};\n\n"
        "static const struct op PROGRAM[N_OPS] = {\n" +
        "".join(f"\t{_op_initialiser(op)},\n" for op in program.ops) + "};\n")
    if leaked:
        program_table += (
            f"\n/* The slab caches that leaked when procfuzz found this leak. */\n"
            f"enum {{ N_LEAKED = {len(leaked)}, LEAK_RUNS = {leak_runs} }};\n\n"
            "static const char *const LEAKED[N_LEAKED] = {\n" +
            "".join(f"\t{c_string(cache)},\n" for cache in leaked) + "};\n\n"
            "/* The growth over all runs that procfuzz's measured noise never reached. */\n"
            "static const long long LEAK_TOLERANCE[N_LEAKED] = { " +
            ", ".join(str(tolerance(cache)) for cache in leaked) + " };\n")
    else:
        program_table += (
            "\nstatic const char *const OP_TEXT[N_OPS] = {\n" +
            "".join(f"\t{c_string(op.to_text())},\n" for op in program.ops) + "};\n\n"
            "/* The reference model's results: ' | ' separates alternatives, a trailing '*' accepts any rest. */\n"
            "static const char *const EXPECTED[N_OPS] = {\n" +
            "".join(f"\t{c_string(result)},\n" for result in expected.results) + "};\n")
    main = ((MAIN_LEAK if leaked else MAIN)
            .replace("ACTOR_AFTER_EXEC", ACTOR_AFTER_EXEC if "exec" in kinds else "(void)argc;")
            .replace("RUN_AS_AGENT", "1" if run_as_agent else "0"))
    return (_header_comment(program, kernel, summary, run_as_agent, leak_runs if leaked else 0)
            + _agent_code(names) + program_table + PERFORM.format(cases="\n".join(cases)) + main)


def _program_lines(program: Program) -> list[str]:
    """The program's text, with the ops of its state check (reference/state_check.py) marked."""
    lines = ["    " + op.to_text() for op in program.ops]
    check = split_state_check(program)
    if check < len(program):
        lines.insert(check, "    # the state check: what the program touched, looked at again")
    return lines


def _header_comment(program: Program, kernel: str, summary: str, run_as_agent: bool, leak_runs: int) -> str:
    lines = [
        f"procfuzz reproducer for program {program.id} ({len(program)} ops).",
        "",
        f"What it shows: {summary}",
        f"Found on: {kernel}",
        "",
        "The program (procfuzz's text form; p1 is the init of a fresh pid namespace):",
        *_program_lines(program),
        "",
        "Build: gcc -static -O2 -Wall -o repro repro.c",
        *(["Run as root: ./repro   It prints each op whose result differs from the reference model's,",
           "then `procfuzz-repro: DIVERGES (k ops)` (exit 1) or `procfuzz-repro: OK` (exit 0); exit 2",
           "when it cannot set up (not root, no namespaces).  Its namespaces and mounts go with it."]
          if not leak_runs else
          [f"Run as root: ./repro   It runs the program {leak_runs + 1} times, each in fresh namespaces, and",
           "after each run prints the settled active object counts of the slab caches that leaked",
           "(drop_caches, an RCU grace period, /sys/kernel/slab/<cache>/shrink, /proc/slabinfo); then",
           "`procfuzz-repro: LEAKS (k caches)` (exit 1) if one grew at every run, and by more than",
           "procfuzz's noise tolerance in all (fuzz/leaks.py leaking), else",
           "`procfuzz-repro: OK` (exit 0); exit 2 when it cannot set up.  Boot the kernel with",
           "slab_nomerge, as procfuzz's guest does, or caches of the same size share one count."]),
        "The code below the program is procfuzz's guest agent (targets/agent/agent.c), trimmed to",
        "the op kinds used.",
    ]
    if run_as_agent:
        lines += ["It runs itself as /agent (the name procfuzz's guest gives the tasks' executable) in a",
                  "private mount namespace; where no /agent exists it creates an empty one to mount on."]
    body = "".join(f" * {line}".rstrip() + "\n" for line in lines).replace("*/", "* /")
    return "/*\n" + body + " */\n"
