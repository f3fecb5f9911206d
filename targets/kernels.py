"""Guest kernels: pinned Debian packages, fetched with apt and cached on the host.

``resolve(name)`` turns a pin name (``6.1-cloud``), a pinned package name, or an explicit
``package=version`` into a ``KernelImage`` whose files are in the cache
(``<cache>/kernels/<package>_<version>/``). Only the files procfuzz boots or inspects are kept:
vmlinuz, config, System.map and the dummy/veth modules, with their sha256 in manifest.json.

Debian removes superseded kernel ABIs from the mirror, so a pin can vanish. Then the newest
package of the same series and flavour (``linux-image-6.1.0-*-cloud-amd64-unsigned``) is used
instead, with a warning naming both; the image's ``label`` always names what was really booted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import lzma
import re
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from reference.profile import KernelProfile
from targets.cache import cache_root, publish

log = logging.getLogger("procfuzz.kernels")

KERNELS_DIR = Path(__file__).with_name("kernels")
PINS_FILE = KERNELS_DIR / "pins.toml"
MODULES = ("dummy", "veth")          # the device kinds of the link ops
# The agent's channel is a virtio-serial port.  Kernels that build its drivers as modules (6.1
# cloud) ship these, which /init loads in this (dependency) order; where they are built in (6.12
# cloud) the package has none of them.
CHANNEL_MODULES = ("virtio", "virtio_ring", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
                   "virtio_pci", "virtio_console")
MANIFEST_FORMAT = 2                  # what extract() keeps; part of a cache entry's name

# linux-image-<series><sep><abi><suffix>: "6.1" ".0-" "50" "-cloud-amd64-unsigned", or
# "6.12" "." "117" "+deb12-cloud-amd64-unsigned". Same prefix and suffix = same series and flavour.
_PACKAGE_RE = re.compile(r"^(linux-image-\d+\.\d+(?:\.0-|\.))(\d+)([-+][a-z0-9+.-]+)$")


class KernelError(RuntimeError):
    pass


@dataclass(frozen=True)
class KernelPin:
    name: str
    package: str
    version: str


@dataclass(frozen=True)
class KernelImage:
    package: str
    version: str
    release: str          # uname -r of the guest, e.g. 6.1.0-50-cloud-amd64
    directory: Path
    pinned: str           # the pin asked for, as package=version; differs from label after a fallback

    @property
    def label(self) -> str:
        return f"{self.package}={self.version}"

    @property
    def vmlinuz(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def config(self) -> Path:
        return self.directory / "config"

    @property
    def modules_dir(self) -> Path:
        return self.directory / "modules"


class Apt(Protocol):
    """The apt queries resolution needs; injected so tests need no network."""

    def versions(self, package: str) -> list[str]: ...
    def packages_with_prefix(self, prefix: str) -> list[str]: ...
    def download(self, package: str, version: str, directory: Path) -> Path: ...


class SystemApt:
    def versions(self, package: str) -> list[str]:
        out = _run(["apt-cache", "madison", package]).stdout
        # "pkg | 6.1.176-1 | http://... Packages"; an unknown package prints nothing.
        return [fields[1].strip() for fields in (line.split("|") for line in out.splitlines())
                if len(fields) >= 3 and fields[0].strip() == package]

    def packages_with_prefix(self, prefix: str) -> list[str]:
        return _run(["apt-cache", "pkgnames", prefix]).stdout.split()

    def download(self, package: str, version: str, directory: Path) -> Path:
        proc = subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=directory,
                              capture_output=True, text=True)
        debs = list(directory.glob("*.deb"))
        if proc.returncode != 0 or len(debs) != 1:
            raise KernelError(f"apt-get download {package}={version} failed: {proc.stderr.strip()[-500:]}")
        return debs[0]


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=True)


# ---- pins and resolution --------------------------------------------------------------------

def load_pins(path: Path = PINS_FILE) -> tuple[str, dict[str, KernelPin]]:
    doc = tomllib.loads(path.read_text())
    pins = {name: KernelPin(name, entry["package"], entry["version"]) for name, entry in doc["kernel"].items()}
    if doc["default"] not in pins:
        raise KernelError(f"{path}: default {doc['default']!r} is not a pin")
    return doc["default"], pins


def find_pin(name: str | None = None, path: Path = PINS_FILE) -> KernelPin:
    """A pin name, a pinned package name, ``package=version`` (any package), or None for the default."""
    default, pins = load_pins(path)
    name = name or default
    if name in pins:
        return pins[name]
    for pin in pins.values():
        if pin.package == name:
            return pin
    if "=" in name:
        package, version = name.split("=", 1)
        return KernelPin(name, package, version)
    raise KernelError(f"unknown kernel {name!r}; pins: {', '.join(sorted(pins))}, or give package=version")


def family_members(package: str, apt: Apt) -> list[str]:
    """Packages of the same series and flavour as ``package``, newest ABI first."""
    match = _PACKAGE_RE.match(package)
    if not match:
        raise KernelError(f"{package}: not a linux-image-<series>.<abi><flavour> package name")
    prefix, _, suffix = match.groups()
    member = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix) + "$")
    found = [(int(m.group(1)), name) for name in apt.packages_with_prefix(prefix)
             if (m := member.match(name))]
    return [name for _, name in sorted(found, reverse=True)]


def candidates(pin: KernelPin, apt: Apt) -> list[tuple[str, str]]:
    """(package, version) to try in order: the pin if the mirror has it, then the family's newest."""
    out = []
    if pin.version in apt.versions(pin.package):
        out.append((pin.package, pin.version))
    for package in family_members(pin.package, apt):
        versions = apt.versions(package)
        if versions and (package, versions[0]) not in out:
            out.append((package, versions[0]))   # madison lists the preferred version first
            break
    return out


def resolve(name: str | None = None, *, apt: Apt | None = None, cache: Path | None = None) -> KernelImage:
    pin = find_pin(name)
    root = (cache or cache_root()) / "kernels"
    image = _load(root, pin.package, pin.version, pin)
    if image:
        return image
    apt = apt or SystemApt()
    failures = []
    for package, version in candidates(pin, apt):
        if (package, version) != (pin.package, pin.version):
            log.warning("kernel %s=%s is not available (%s); using the newest other package of its "
                        "series and flavour instead: %s=%s", pin.package, pin.version,
                        "; ".join(failures) or "not on the mirror", package, version)
        image = _load(root, package, version, pin)
        if image:
            return image
        try:
            return _install(root, package, version, pin, apt)
        except KernelError as err:
            failures.append(str(err))
    raise KernelError(f"no kernel for {pin.package}={pin.version}: "
                      + ("; ".join(failures) or "neither it nor any package of its family is on the mirror"
                         " (run apt-get update?)"))


# ---- profiles --------------------------------------------------------------------------------

def profile_path(label_or_package: str) -> Path:
    return KERNELS_DIR / f"{label_or_package.split('=', 1)[0]}.profile.json"


def load_profile(kernel: str | None = None) -> KernelProfile:
    """The stored /proc profile of a kernel: a pin name, a package, a label (package=version),
    or None for the default pin. Captured by targets/profile_capture.py."""
    path = profile_path(kernel) if kernel else None
    if not (path and path.is_file()):
        path = profile_path(find_pin(kernel).package)
    if not path.is_file():
        raise KernelError(f"no profile {path.name} for kernel {kernel or 'default'}; capture it with "
                          f"python -m targets.profile_capture {kernel or ''}".rstrip())
    return KernelProfile.from_json(json.loads(path.read_text()))


# ---- cache entries --------------------------------------------------------------------------

def _entry(root: Path, package: str, version: str) -> Path:
    # Named by what extract() keeps too: an entry of an older format stays valid for older code.
    return root / f"{package}_{version}_f{MANIFEST_FORMAT}"


def _load(root: Path, package: str, version: str, pin: KernelPin) -> KernelImage | None:
    manifest = _entry(root, package, version) / "manifest.json"
    if not manifest.is_file():
        return None
    doc = json.loads(manifest.read_text())
    directory = manifest.parent
    for rel, meta in doc["files"].items():
        if _sha256(directory / rel) != meta["sha256"]:
            raise KernelError(f"{directory / rel}: checksum mismatch; delete {directory} to refetch")
    return KernelImage(doc["package"], doc["version"], doc["release"], directory,
                       f"{pin.package}={pin.version}")


def _install(root: Path, package: str, version: str, pin: KernelPin, apt: Apt) -> KernelImage:
    final = _entry(root, package, version)
    with tempfile.TemporaryDirectory(prefix="procfuzz-deb-") as scratch, publish(final) as out:
        scratch = Path(scratch)
        deb = apt.download(package, version, scratch)
        tree = scratch / "tree"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True, capture_output=True)
        release = extract(tree, out)
        files = {str(p.relative_to(out)): {"sha256": _sha256(p), "size": p.stat().st_size}
                 for p in sorted(out.rglob("*")) if p.is_file()}
        manifest = {"format": MANIFEST_FORMAT, "package": package, "version": version,
                    "pinned": f"{pin.package}={pin.version}", "release": release, "files": files}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return _load(root, package, version, pin)


def extract(tree: Path, out: Path) -> str:
    """Copy the needed files from an unpacked image package to ``out``; returns the release."""
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise KernelError(f"expected one boot/vmlinuz-* in the package, found {len(kernels)}")
    release = kernels[0].name.removeprefix("vmlinuz-")
    boot = tree / "boot"
    for src, dst in ((f"vmlinuz-{release}", "vmlinuz"), (f"config-{release}", "config"),
                     (f"System.map-{release}", "System.map")):
        data = (boot / src).read_bytes()
        if not data:
            raise KernelError(f"boot/{src} is empty")
        (out / dst).write_bytes(data)
    check_bzimage((out / "vmlinuz").read_bytes())
    mod_root = next((d for d in (tree / "lib/modules" / release, tree / "usr/lib/modules" / release)
                     if d.is_dir()), None)
    if mod_root is None:
        raise KernelError(f"no modules directory for {release} in the package")
    (out / "modules").mkdir()
    for name in MODULES:
        (out / "modules" / f"{name}.ko").write_bytes(_module(mod_root, name))
    for name in CHANNEL_MODULES:
        if _module_files(mod_root, name):
            (out / "modules" / f"{name}.ko").write_bytes(_module(mod_root, name))
    return release


def _module_files(mod_root: Path, name: str) -> list[Path]:
    return sorted(mod_root.rglob(f"{name}.ko")) + sorted(mod_root.rglob(f"{name}.ko.xz"))


def _module(mod_root: Path, name: str) -> bytes:
    found = _module_files(mod_root, name)
    if not found:
        raise KernelError(f"module {name} not found under {mod_root}")
    data = found[0].read_bytes()
    if found[0].suffix == ".xz":
        data = lzma.decompress(data)   # the guest has no xz; modules go in uncompressed
    if not data.startswith(b"\x7fELF"):
        raise KernelError(f"{found[0]} is not an ELF module")
    return data


def check_bzimage(data: bytes) -> None:
    if len(data) < 0x206 or data[0x202:0x206] != b"HdrS":
        raise KernelError("vmlinuz is not a bzImage (no HdrS magic at 0x202)")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
