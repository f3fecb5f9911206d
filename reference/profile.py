"""Kernel profile: the names a kernel build shows in /proc, captured from the kernel itself.

The model never hard-codes entry names: /proc's static entries and the entries of
/proc/<pid>/ and /proc/<pid>/task/<tid>/ depend on the kernel version and config (6.1 and
6.12 differ), so each kernel pin carries a profile file captured by booting it once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FILE_TYPES = ("dir", "reg", "lnk")


@dataclass(frozen=True)
class KernelProfile:
    release: str
    root: dict[str, str]          # static /proc entries (not pids, not self/thread-self) -> type
    root_links: dict[str, str]    # static /proc symlinks -> target (e.g. mounts -> self/mounts)
    tgid: dict[str, str]          # entries of /proc/<pid>/ -> type
    tid: dict[str, str]           # entries of /proc/<pid>/task/<tid>/ -> type
    # /proc/sys listings read in a fresh network namespace: "sys", "net", "ipv4", "ipv4_conf",
    # "ipv4_conf_all", "ipv4_conf_default", "ipv4_conf_dev" (lo's), "ipv4_neigh", "ipv4_neigh_dev",
    # and the same for ipv6; each maps name -> type
    sysctl: dict = field(default_factory=dict)
    # entries of /proc/<pid>/net (that task's network namespace's proc_net) -> type
    pid_net: dict = field(default_factory=dict)
    # the package booted, "<name>=<version>" as pins.toml names it ("" when unknown): Debian's
    # release string (6.1.0-50-cloud-amd64) does not say which 6.1.y it is, the version does
    package: str = ""

    @classmethod
    def from_json(cls, doc: dict) -> "KernelProfile":
        def table(key):
            value = doc.get(key)
            if not isinstance(value, dict) or not all(
                    isinstance(k, str) and v in FILE_TYPES for k, v in value.items()):
                raise ValueError(f"profile field {key!r} must map names to one of {FILE_TYPES}")
            return dict(value)
        links = doc.get("root_links", {})
        if not isinstance(links, dict) or not all(isinstance(v, str) for v in links.values()):
            raise ValueError("profile field 'root_links' must map names to link targets")
        root = table("root")
        root.pop("self", None)
        root.pop("thread-self", None)
        sysctl = doc.get("sysctl", {})
        if not isinstance(sysctl, dict) or not all(
                isinstance(t, dict) and all(v in FILE_TYPES for v in t.values()) for t in sysctl.values()):
            raise ValueError("profile field 'sysctl' must map table names to name -> type maps")
        pid_net = table("pid_net") if "pid_net" in doc else {}
        return cls(str(doc.get("release", "")), root, dict(links), table("tgid"), table("tid"),
                   {key: dict(value) for key, value in sysctl.items()}, pid_net, str(doc.get("kernel", "")))

    @property
    def version(self) -> tuple[int, int]:
        """(major, minor) from the release string, (0, 0) when it has none."""
        head = self.release.split("-", 1)[0].split("+", 1)[0].split(".")
        try:
            return int(head[0]), int(head[1])
        except (IndexError, ValueError):
            return (0, 0)

    @property
    def sublevel(self) -> int:
        """The stable release y of x.z.y: from the package version (linux-image-...=6.1.176-1),
        else from the release string (6.12.117+deb12-cloud-amd64); 0 when neither says."""
        for text in (self.package.partition("=")[2], self.release):
            head = text.split("-", 1)[0].split("+", 1)[0].split(".")
            if len(head) >= 3 and head[2].isdigit() and int(head[2]) > 0:
                return int(head[2])
        return 0

    def to_json(self) -> dict:
        return {"release": self.release, "root": self.root, "root_links": self.root_links,
                "tgid": self.tgid, "tid": self.tid, "sysctl": self.sysctl, "pid_net": self.pid_net,
                **({"kernel": self.package} if self.package else {})}
