"""The guest's initramfs: busybox, the agent, the kernel's dummy and veth modules and an /init
that loads them and hands the machine to the agent.

Both artefacts are cached under content keys: the agent by its source and compiler, the
initramfs by everything that goes into it (so there is one initramfs per kernel: the modules
belong to it). The cpio archive is written here rather than by
cpio(1) so that the same inputs always give the same bytes (fixed inode numbers, owners and
mtimes, sorted entries, gzip with mtime 0): a trace can then name its exact guest image.
"""

from __future__ import annotations

import gzip
import hashlib
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from targets.cache import cache_root, publish
from targets.kernels import CHANNEL_MODULES, MODULES

AGENT_SOURCE = Path(__file__).with_name("agent") / "agent.c"
BUSYBOX = Path("/bin/busybox")     # Debian's busybox-static
CC = ["gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread"]
APPLETS = ("sh", "mount", "insmod")   # what /init uses; the agent itself needs none
MODULE_DIR = "lib/modules"            # flat: <name>.ko, loaded by path (no modprobe, no depmod)
AGENT_PORT = "/dev/vport0p1"          # the virtio-serial port targets/vm.py gives QEMU (nr=1)
LOAD_ORDER = CHANNEL_MODULES + MODULES


def init_script(modules: list[str]) -> bytes:
    """/init: mounts, the modules in the given order (a failing insmod is logged on the console
    and the agent starts anyway; link ops then answer EOPNOTSUPP), then the agent."""
    lines = ["#!/bin/sh",
             "# PID 1: the agent needs proc, sysfs and device nodes; it then becomes PID 1 itself.",
             "mount -t proc proc /proc",
             "mount -t sysfs sysfs /sys",
             "mount -t devtmpfs devtmpfs /dev"]
    lines += [f"insmod /{MODULE_DIR}/{name}.ko" for name in modules]
    lines += [f"exec /agent serve {AGENT_PORT}"]
    return "".join(line + "\n" for line in lines).encode()


INIT = init_script([])


@dataclass(frozen=True)
class Entry:
    path: str            # relative, no leading slash
    mode: int            # full st_mode, file type included
    data: bytes = b""    # file contents or symlink target
    rdev: tuple[int, int] = (0, 0)


def build_agent(source: Path = AGENT_SOURCE, cache: Path | None = None) -> Path:
    """Compile the agent statically; cached by the hash of source, flags and compiler version."""
    compiler = subprocess.run([CC[0], "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\0".join([source.read_text(), " ".join(CC), compiler]).encode()).hexdigest()[:16]
    final = (cache or cache_root()) / "agent" / key
    if not (final / "agent").is_file():
        with publish(final) as out:
            proc = subprocess.run(CC + ["-o", str(out / "agent"), str(source)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"building {source} failed:\n{proc.stderr}")
    return final / "agent"


def entries(agent: bytes, busybox: bytes, modules: dict[str, bytes] | None = None,
            files: dict[str, bytes] | None = None) -> list[Entry]:
    """modules: name -> .ko contents, loaded by /init in LOAD_ORDER (then by name).
    files: more files, guest path (relative to /) -> contents, executable and not loaded or run
    by /init: the agent loads modules among them (`C load`) and runs programs (`C run`) on request
    (the bug zoo's module, --load-module modules, C reproducers)."""
    modules, files = modules or {}, files or {}
    order = [m for m in LOAD_ORDER if m in modules] + sorted(set(modules) - set(LOAD_ORDER))
    paths = [f"{MODULE_DIR}/{name}.ko" for name in order] + list(files)
    dirs = {"bin", "dev", "mnt", "proc", "sys", "tmp"}
    for path in paths:
        parts = path.split("/")[:-1]
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    out = [Entry(d, stat.S_IFDIR | 0o755) for d in sorted(dirs)]
    out += [Entry(f"{MODULE_DIR}/{name}.ko", stat.S_IFREG | 0o644, modules[name]) for name in order]
    out += [Entry(path, stat.S_IFREG | 0o755, data) for path, data in sorted(files.items())]
    out += [Entry("bin/busybox", stat.S_IFREG | 0o755, busybox),
            Entry("agent", stat.S_IFREG | 0o755, agent),
            Entry("init", stat.S_IFREG | 0o755, init_script(order)),
            # The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
            Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))]
    out += [Entry(f"bin/{applet}", stat.S_IFLNK | 0o777, b"busybox") for applet in APPLETS]
    return out


def newc_archive(items: list[Entry]) -> bytes:
    """A cpio "newc" archive with fixed metadata, entries sorted by path (parents first)."""
    out = bytearray()

    def record(ino: int, mode: int, data: bytes, name: str, rdev=(0, 0), nlink=1) -> None:
        name_bytes = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_bytes), 0)
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + name_bytes)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, item in enumerate(sorted(items, key=lambda e: e.path.encode()), 1):
        nlink = 2 if stat.S_ISDIR(item.mode) else 1
        record(ino, item.mode, item.data, item.path, item.rdev, nlink)
    record(0, 0, b"", "TRAILER!!!")
    return bytes(out)


def kernel_modules(modules_dir: Path) -> dict[str, bytes]:
    """The modules of a kernel cache entry (KernelImage.modules_dir): kernels.MODULES, and the
    CHANNEL_MODULES its kernel does not have built in."""
    missing = [name for name in MODULES if not (modules_dir / f"{name}.ko").is_file()]
    if missing:
        raise FileNotFoundError(f"{modules_dir}: no {', '.join(m + '.ko' for m in missing)}; delete "
                                f"{modules_dir.parent} to fetch the kernel again")
    return {name: (modules_dir / f"{name}.ko").read_bytes() for name in LOAD_ORDER
            if (modules_dir / f"{name}.ko").is_file()}


def image_file_path(path: str) -> str:
    """A guest path for `files`: relative, no '..', printable; ValueError otherwise."""
    clean = path.strip("/")
    if not clean or ".." in clean.split("/") or not clean.isprintable() or " " in clean or len(clean) > 150:
        raise ValueError(f"bad guest file path {path!r}")
    return clean


def build_initramfs(agent: Path, busybox: Path = BUSYBOX, cache: Path | None = None,
                    modules_dir: Path | None = None, files: dict[str, bytes] | None = None) -> Path:
    """The archive; with modules_dir (a kernel's, see kernel_modules) /init loads its modules;
    files (see entries) are in the image, not loaded."""
    modules = kernel_modules(modules_dir) if modules_dir is not None else {}
    files = {image_file_path(path): data for path, data in (files or {}).items()}
    archive = newc_archive(entries(agent.read_bytes(), busybox.read_bytes(), modules, files))
    final = (cache or cache_root()) / "initramfs" / hashlib.sha256(archive).hexdigest()[:16]
    if not (final / "initramfs.cpio.gz").is_file():
        with publish(final) as out:
            (out / "initramfs.cpio.gz").write_bytes(gzip.compress(archive, compresslevel=9, mtime=0))
    return final / "initramfs.cpio.gz"


def guest_image(source: Path = AGENT_SOURCE, cache: Path | None = None,
                modules_dir: Path | None = None, files: dict[str, bytes] | None = None) -> Path:
    """The initramfs for the current agent source and a kernel's modules (its
    KernelImage.modules_dir), plus extra files: built on first use, then cached."""
    return build_initramfs(build_agent(source, cache), cache=cache, modules_dir=modules_dir, files=files)
