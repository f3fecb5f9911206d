"""Capture a kernel's /proc profile (the names the reference model needs) by running programs.

The profile is read from the kernel with ordinary procfuzz programs, so it sees exactly what
the agent's sandbox sees: a fresh proc mount of a new pid namespace whose only task is p1.
It lists the static entries of the /proc root (pid directories excluded; self and thread-self
kept), the targets of the root's static symlinks, and the entries of /proc/<pid>/ and
/proc/<pid>/task/<tid>/, each with its type from lstat (the mode is not part of the result).
Stored as targets/kernels/<package>.profile.json (read back by targets.kernels.load_profile),
in the shape reference.profile reads; review a new or changed profile like code.

    python -m targets.profile_capture [KERNEL...]   # capture and store; the default kernel if none
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from reference.program import parse_text
from targets.kernels import profile_path

PROFILE_FORMAT = 1
DIRS = {"root": "{m1}", "tgid": "{m1}/{p1}", "tid": "{m1}/{p1}/task/{p1}"}
LINKS_TO_SELF = ("self", "thread-self")   # per-reader links: the model computes their targets
# /proc/sys/net in a fresh network namespace (only lo): the per-device tables are read from lo's.
SYSCTL_DIRS = {"sys": "{m1}/sys", "net": "{m1}/sys/net"}
for _proto in ("ipv4", "ipv6"):
    SYSCTL_DIRS[_proto] = f"{{m1}}/sys/net/{_proto}"
    SYSCTL_DIRS[f"{_proto}_conf"] = f"{{m1}}/sys/net/{_proto}/conf"
    SYSCTL_DIRS[f"{_proto}_neigh"] = f"{{m1}}/sys/net/{_proto}/neigh"
    for _table, _entry in (("conf_all", "conf/all"), ("conf_default", "conf/default"), ("conf_dev", "conf/lo"),
                           ("neigh_default", "neigh/default"), ("neigh_dev", "neigh/lo")):
        SYSCTL_DIRS[f"{_proto}_{_table}"] = f"{{m1}}/sys/net/{_proto}/{_entry}"


class ProfileError(RuntimeError):
    pass


def _run(target, text: str) -> tuple[str, ...]:
    trace = target.run(parse_text(text, source="profile capture"))
    if trace.outcome != "ok":
        raise ProfileError(f"capture program failed: {trace.outcome}: {trace.title}")
    return trace.results


def _payload(result: str, what: str) -> str:
    if not result.startswith("ok:"):
        raise ProfileError(f"{what}: {result}")
    return result[3:]


def _tables(target, dirs: dict[str, str], optional: bool = False) -> dict[str, dict[str, str]]:
    """name -> type of every non-numeric entry of each directory, read in a fresh sandbox;
    with `optional`, a directory the kernel does not have (ENOENT) is left out."""
    listing = _run(target, "m1 = mount_proc p1\n" + "".join(f"readdir p1 {d}\n" for d in dirs.values()))
    tables = {}
    for (key, path), result in zip(dirs.items(), listing[1:]):
        if optional and result == "ENOENT":
            continue
        names = [n for n in _payload(result, f"readdir {path}").split(",") if n and not n.isdigit()]
        types = _run(target, "m1 = mount_proc p1\n" + "".join(f"lookup p1 {path}/{n}\n" for n in names))[1:]
        tables[key] = {name: _payload(t, f"lookup {path}/{name}") for name, t in zip(names, types)}
    return tables


def capture_profile(target) -> dict:
    profile = {"format": PROFILE_FORMAT, "kernel": target.label, "release": target.image.release}
    profile.update(_tables(target, DIRS))
    profile["sysctl"] = _tables(target, SYSCTL_DIRS, optional=True)
    profile["pid_net"] = _tables(target, {"pid_net": "{m1}/{p1}/net"})["pid_net"]
    links = sorted(n for n, t in profile["root"].items() if t == "lnk" and n not in LINKS_TO_SELF)
    targets = _run(target, "m1 = mount_proc p1\n" + "".join(f"readlink p1 {{m1}}/{n}\n" for n in links))[1:]
    profile["root_links"] = {name: _payload(t, f"readlink {name}") for name, t in zip(links, targets)}
    return profile


def save_profile(profile: dict) -> Path:
    path = profile_path(profile["kernel"])
    path.write_text(json.dumps(profile, indent=1, sort_keys=True) + "\n")
    return path


def capture_and_store(kernel: str | None = None) -> Path:
    from targets.qemu import QemuTarget
    with QemuTarget(kernel) as target:
        return save_profile(capture_profile(target))


def main(argv: list[str]) -> None:
    for kernel in argv or [None]:
        print(capture_and_store(kernel))


if __name__ == "__main__":
    main(sys.argv[1:])
