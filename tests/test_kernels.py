"""Kernel pins, resolution with fallback, extraction and the initramfs archive: no network, no VM."""

import gzip
import json
import logging
import lzma
import stat
import subprocess
from pathlib import Path

import pytest

from targets import initramfs, kernels
from targets.kernels import KernelError, KernelPin, candidates, family_members, find_pin, resolve

CLOUD_61 = "linux-image-6.1.0-{}-cloud-amd64-unsigned"
BZIMAGE = b"\0" * 0x202 + b"HdrS" + b"\0" * 100


class FakeApt:
    """apt as a dict package -> versions (preferred first); downloads build a tiny real .deb."""

    def __init__(self, packages: dict[str, list[str]], broken=(), channel_built_in=False):
        self.packages, self.broken, self.downloads = packages, set(broken), []
        self.channel_built_in = channel_built_in

    def versions(self, package):
        return list(self.packages.get(package, []))

    def packages_with_prefix(self, prefix):
        return [p for p in self.packages if p.startswith(prefix)]

    def download(self, package, version, directory):
        self.downloads.append((package, version))
        if (package, version) in self.broken:
            raise KernelError(f"apt-get download {package}={version} failed: 404")
        return fake_deb(directory, package, version, channel_built_in=self.channel_built_in)


def fake_deb(directory: Path, package: str, version: str, xz_modules=False, channel_built_in=False) -> Path:
    """A kernel package: image, config, map, the link ops' modules and, unless its kernel has them
    built in (6.12 cloud), the virtio-serial channel's modules (6.1 cloud)."""
    release = package.removeprefix("linux-image-").removesuffix("-unsigned")
    tree = directory / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(f"Package: {package}\nVersion: {version}\nArchitecture: amd64\n"
                                         "Maintainer: test <t@example.org>\nDescription: test\n")
    (tree / "boot").mkdir()
    (tree / f"boot/vmlinuz-{release}").write_bytes(BZIMAGE)
    (tree / f"boot/config-{release}").write_text("CONFIG_PROC_FS=y\n")
    (tree / f"boot/System.map-{release}").write_text("ffffffff81000000 T _text\n")
    net = tree / f"lib/modules/{release}/kernel/drivers/net"
    net.mkdir(parents=True)
    virtio = tree / f"lib/modules/{release}/kernel/drivers/virtio"
    virtio.mkdir()
    for name in kernels.MODULES + (() if channel_built_in else kernels.CHANNEL_MODULES):
        module = b"\x7fELF" + name.encode()
        where = net if name in kernels.MODULES else virtio
        if xz_modules:
            (where / f"{name}.ko.xz").write_bytes(lzma.compress(module, format=lzma.FORMAT_XZ))
        else:
            (where / f"{name}.ko").write_bytes(module)
    deb = directory / f"{package}_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(tree), str(deb)], check=True, capture_output=True)
    return deb


def test_pins_file_has_the_three_kernels_and_a_default():
    default, pins = kernels.load_pins()
    assert pins[default].package == CLOUD_61.format(50) and pins[default].version == "6.1.176-1"
    assert {p.package for p in pins.values()} >= {"linux-image-6.12.117+deb12-cloud-amd64-unsigned",
                                                   "linux-image-6.1.0-50-amd64-unsigned"}


def test_find_pin_by_name_package_or_explicit_version():
    assert find_pin().name == find_pin("6.1-cloud").name
    assert find_pin(CLOUD_61.format(50)).name == "6.1-cloud"
    assert find_pin(CLOUD_61.format(47) + "=6.1.158-1") == KernelPin(CLOUD_61.format(47) + "=6.1.158-1",
                                                                CLOUD_61.format(47), "6.1.158-1")
    with pytest.raises(KernelError, match="unknown kernel"):
        find_pin("6.99-cloud")


def test_family_is_same_series_and_flavour_newest_abi_first():
    apt = FakeApt({CLOUD_61.format(n): ["v"] for n in (9, 47, 56, 50)}
                  | {"linux-image-6.1.0-56-amd64-unsigned": ["v"], "linux-image-6.1.0-56-rt-amd64-unsigned": ["v"],
                     "linux-image-6.12.117+deb12-cloud-amd64-unsigned": ["v"]})
    assert family_members(CLOUD_61.format(50), apt) == [CLOUD_61.format(n) for n in (56, 50, 47, 9)]
    assert family_members("linux-image-6.1.0-50-amd64-unsigned", apt) == ["linux-image-6.1.0-56-amd64-unsigned"]
    assert family_members("linux-image-6.12.107+deb12-cloud-amd64-unsigned", apt) == [
        "linux-image-6.12.117+deb12-cloud-amd64-unsigned"]


def test_candidates_pin_first_then_newest_other():
    pin = KernelPin("x", CLOUD_61.format(50), "6.1.176-1")
    apt = FakeApt({CLOUD_61.format(50): ["6.1.176-1"], CLOUD_61.format(56): ["6.1.192-2", "6.1.190-1"]})
    assert candidates(pin, apt) == [(pin.package, pin.version), (CLOUD_61.format(56), "6.1.192-2")]
    gone = FakeApt({CLOUD_61.format(56): ["6.1.192-2"], CLOUD_61.format(53): ["6.1.180-1"]})
    assert candidates(pin, gone) == [(CLOUD_61.format(56), "6.1.192-2")]
    assert candidates(pin, FakeApt({})) == []


def test_resolve_fetches_extracts_and_caches(tmp_path):
    apt = FakeApt({CLOUD_61.format(50): ["6.1.176-1"]})
    image = resolve("6.1-cloud", apt=apt, cache=tmp_path)
    assert image.label == f"{CLOUD_61.format(50)}=6.1.176-1" == image.pinned
    assert image.release == "6.1.0-50-cloud-amd64"
    assert image.vmlinuz.read_bytes() == BZIMAGE
    assert (image.modules_dir / "veth.ko").read_bytes() == b"\x7fELFveth"
    manifest = json.loads((image.directory / "manifest.json").read_text())
    channel = {f"modules/{name}.ko" for name in kernels.CHANNEL_MODULES}
    assert set(manifest["files"]) == {"vmlinuz", "config", "System.map", "modules/dummy.ko", "modules/veth.ko"} | channel
    assert image.directory == tmp_path / "kernels" / f"{CLOUD_61.format(50)}_6.1.176-1_f{kernels.MANIFEST_FORMAT}"
    # Cached: a second resolve asks apt nothing.
    assert resolve("6.1-cloud", apt=FakeApt({}), cache=tmp_path) == image


def test_resolve_falls_back_with_a_warning_naming_both(tmp_path, caplog):
    apt = FakeApt({CLOUD_61.format(56): ["6.1.192-2"], CLOUD_61.format(53): ["6.1.180-1"]})
    with caplog.at_level(logging.WARNING, logger="procfuzz.kernels"):
        image = resolve("6.1-cloud", apt=apt, cache=tmp_path)
    assert image.label == f"{CLOUD_61.format(56)}=6.1.192-2"
    assert image.pinned == f"{CLOUD_61.format(50)}=6.1.176-1"
    assert f"{CLOUD_61.format(50)}=6.1.176-1" in caplog.text and image.label in caplog.text
    manifest = json.loads((image.directory / "manifest.json").read_text())
    assert (manifest["package"], manifest["version"], manifest["pinned"]) == (
        CLOUD_61.format(56), "6.1.192-2", image.pinned)


def test_resolve_falls_back_when_the_download_fails(tmp_path, caplog):
    apt = FakeApt({CLOUD_61.format(50): ["6.1.176-1"], CLOUD_61.format(56): ["6.1.192-2"]},
                  broken=[(CLOUD_61.format(50), "6.1.176-1")])
    image = resolve("6.1-cloud", apt=apt, cache=tmp_path)
    assert image.label == f"{CLOUD_61.format(56)}=6.1.192-2"
    assert "404" in caplog.text
    assert not list((tmp_path / "kernels").glob(".*")), "no temporary directory left behind"


def test_resolve_without_any_candidate_fails_clearly(tmp_path):
    with pytest.raises(KernelError, match="apt-get update"):
        resolve("6.1-cloud", apt=FakeApt({}), cache=tmp_path)


def test_xz_modules_are_decompressed(tmp_path):
    package = "linux-image-6.12.117+deb12-cloud-amd64-unsigned"
    deb = fake_deb(tmp_path, package, "6.12.117-1~deb12u1", xz_modules=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "tree")], check=True)
    (tmp_path / "out").mkdir()
    assert kernels.extract(tmp_path / "tree", tmp_path / "out") == "6.12.117+deb12-cloud-amd64"
    assert (tmp_path / "out/modules/dummy.ko").read_bytes() == b"\x7fELFdummy"


def test_bzimage_check():
    kernels.check_bzimage(BZIMAGE)
    with pytest.raises(KernelError, match="HdrS"):
        kernels.check_bzimage(b"\x7fELF" + b"\0" * 1000)


def test_cached_file_corruption_is_detected(tmp_path):
    image = resolve("6.1-cloud", apt=FakeApt({CLOUD_61.format(50): ["6.1.176-1"]}), cache=tmp_path)
    image.config.write_text("tampered")
    with pytest.raises(KernelError, match="checksum"):
        resolve("6.1-cloud", apt=FakeApt({}), cache=tmp_path)


# ---- initramfs ------------------------------------------------------------------------------

def read_newc(data: bytes) -> list[dict]:
    """Minimal newc reader for the checks below."""
    out, pos = [], 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, _, _, rmaj, rmin, namesize, _ = fields
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        body = data[pos:pos + size]
        pos = (pos + size + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out.append(dict(ino=ino, mode=mode, uid=uid, gid=gid, mtime=mtime, name=name, body=body, rdev=(rmaj, rmin)))


def test_initramfs_is_reproducible_and_complete(tmp_path):
    agent, busybox = tmp_path / "agent", tmp_path / "busybox"
    agent.write_bytes(b"\x7fELF agent")
    busybox.write_bytes(b"\x7fELF busybox")
    first = initramfs.build_initramfs(agent, busybox, cache=tmp_path / "a").read_bytes()
    second = initramfs.build_initramfs(agent, busybox, cache=tmp_path / "b").read_bytes()
    assert first == second
    entries = read_newc(gzip.decompress(first))
    names = [e["name"] for e in entries]
    assert names == sorted(names)
    assert [e["ino"] for e in entries] == list(range(1, len(entries) + 1))
    assert all(e["mtime"] == 0 and e["uid"] == 0 and e["gid"] == 0 for e in entries)
    by_name = {e["name"]: e for e in entries}
    assert {"proc", "sys", "dev", "mnt", "tmp", "bin"} <= {n for n, e in by_name.items() if stat.S_ISDIR(e["mode"])}
    assert by_name["agent"]["body"] == b"\x7fELF agent"
    assert by_name["bin/busybox"]["body"] == b"\x7fELF busybox"
    assert stat.S_ISLNK(by_name["bin/sh"]["mode"]) and by_name["bin/sh"]["body"] == b"busybox"
    assert by_name["dev/console"]["rdev"] == (5, 1) and stat.S_ISCHR(by_name["dev/console"]["mode"])
    init = by_name["init"]["body"].decode()
    assert init.startswith("#!/bin/sh\n") and init.rstrip().endswith("exec /agent serve /dev/vport0p1")
    for word in ("proc", "sysfs", "devtmpfs"):
        assert f"mount -t {word}" in init


def test_agent_build_is_cached_by_source(tmp_path):
    source = tmp_path / "agent.c"
    source.write_text("int main(void) { return 0; }\n")
    first = initramfs.build_agent(source, cache=tmp_path)
    assert first.read_bytes().startswith(b"\x7fELF")
    assert initramfs.build_agent(source, cache=tmp_path) == first
    source.write_text("int main(void) { return 1; }\n")
    assert initramfs.build_agent(source, cache=tmp_path) != first
    source.write_text("int main(void) { int unused; return 0; }\n")
    with pytest.raises(RuntimeError, match="unused"):
        initramfs.build_agent(source, cache=tmp_path)


# ---- profiles -------------------------------------------------------------------------------

class FakeKernelTarget:
    """Answers readdir/lookup/readlink from a small fake /proc, like the QEMU target would."""

    label = f"{CLOUD_61.format(50)}=6.1.176-1"
    image = type("Image", (), {"release": "6.1.0-50-cloud-amd64"})
    tree = {"{m1}": {"1": "dir", "meminfo": "reg", "mounts": "lnk", "self": "lnk", "thread-self": "lnk", "sys": "dir"},
            "{m1}/{p1}": {"status": "reg", "task": "dir", "cwd": "lnk"},
            "{m1}/{p1}/task/{p1}": {"status": "reg", "cwd": "lnk"},
            "{m1}/sys": {"net": "dir"}, "{m1}/sys/net": {"ipv4": "dir"},
            "{m1}/sys/net/ipv4": {"conf": "dir"}, "{m1}/sys/net/ipv4/conf": {"all": "dir", "lo": "dir"},
            "{m1}/sys/net/ipv4/conf/lo": {"forwarding": "reg"},
            "{m1}/{p1}/net": {"dev": "reg", "dev_snmp6": "dir"}}

    def run(self, program):
        from reference.trace import Trace
        results = []
        for op in program.ops:
            if op.kind == "mount_proc":
                results.append("ok")
                continue
            path = op.arg("path")
            parent, _, name = path.rpartition("/")
            if op.kind == "readdir":
                results.append("ok:" + ",".join(sorted(self.tree[path])) if path in self.tree else "ENOENT")
            elif op.kind == "lookup":
                results.append("ok:" + self.tree[parent][name])
            else:
                results.append({"mounts": "ok:self/mounts"}[name])
        return Trace(tuple(results), kernel=self.label)


def test_capture_profile_and_load_it_back(tmp_path, monkeypatch):
    from targets.profile_capture import capture_profile, save_profile
    monkeypatch.setattr(kernels, "KERNELS_DIR", tmp_path)
    profile = capture_profile(FakeKernelTarget())
    assert profile["root"] == {"meminfo": "reg", "mounts": "lnk", "self": "lnk", "thread-self": "lnk", "sys": "dir"}
    assert profile["root_links"] == {"mounts": "self/mounts"}
    assert profile["tgid"] == {"status": "reg", "task": "dir", "cwd": "lnk"}
    assert profile["tid"] == {"status": "reg", "cwd": "lnk"}
    assert profile["release"] == "6.1.0-50-cloud-amd64"
    assert profile["sysctl"] == {"sys": {"net": "dir"}, "net": {"ipv4": "dir"}, "ipv4": {"conf": "dir"},
                                 "ipv4_conf": {"all": "dir", "lo": "dir"},
                                 "ipv4_conf_dev": {"forwarding": "reg"}}    # absent tables left out
    assert profile["pid_net"] == {"dev": "reg", "dev_snmp6": "dir"}
    path = save_profile(profile)
    assert path == tmp_path / f"{CLOUD_61.format(50)}.profile.json"
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=1, sort_keys=True) + "\n"
    for name in ("6.1-cloud", CLOUD_61.format(50), FakeKernelTarget.label, None):
        loaded = kernels.load_profile(name)
        assert loaded.tgid == profile["tgid"] and "self" not in loaded.root
    with pytest.raises(KernelError, match="profile_capture"):
        kernels.load_profile("6.12-cloud")


def test_init_loads_the_channel_modules_first_unless_the_kernel_has_them_built_in(tmp_path):
    agent, busybox = tmp_path / "agent", tmp_path / "busybox"
    agent.write_bytes(b"\x7fELF agent")
    busybox.write_bytes(b"\x7fELF busybox")
    for built_in in (False, True):
        apt = FakeApt({CLOUD_61.format(50): ["6.1.176-1"]}, channel_built_in=built_in)
        image = resolve("6.1-cloud", apt=apt, cache=tmp_path / f"cache-{built_in}")
        archive = initramfs.build_initramfs(agent, busybox, cache=tmp_path / f"image-{built_in}",
                                            modules_dir=image.modules_dir)
        init = {e["name"]: e for e in read_newc(gzip.decompress(archive.read_bytes()))}["init"]["body"].decode()
        loaded = [line.rpartition("/")[2].removesuffix(".ko") for line in init.splitlines()
                  if line.startswith("insmod ")]
        assert loaded == ([] if built_in else list(kernels.CHANNEL_MODULES)) + list(kernels.MODULES)
