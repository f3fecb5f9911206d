"""Build the bug zoo's kernel module (zoo.c) for a guest kernel, against Debian's headers.

``build_zoo(image) -> Path`` returns the cached ``zoo.ko`` for a ``KernelImage``:
- the headers: ``linux-headers-<release>`` of the image's version, the ``-common`` and
  ``linux-kbuild-*`` packages it depends on, fetched with ``apt-get download`` and extracted with
  ``dpkg-deb -x`` (no install) into ``<cache>/zoo/headers/<release>/``. The headers' Makefile
  includes the ``-common`` tree by absolute path: it is rewritten to the extracted tree (the
  ``scripts``/``tools`` links are relative and resolve inside it);
- the module: ``make -C <headers> M=<copy of targets/zoo> modules``, cached in
  ``<cache>/zoo/ko/<release>/<key>/zoo.ko`` keyed by the module's sources and the compiler.

Run as ``python -m targets.zoo.build [kernel-pin ...]`` to build (and time) it by hand.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from targets.cache import cache_root, publish
from targets.kernels import KernelImage, resolve

ZOO_DIR = Path(__file__).parent
SOURCES = ("zoo.c", "Kbuild")
# 6.12's headers enable BTF for modules; there is no pahole (nor vmlinux) to make it.
MAKE_VARS = ["CONFIG_DEBUG_INFO_BTF_MODULES="]


class ZooBuildError(RuntimeError):
    pass


def _run(argv: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ZooBuildError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.stdout


def header_packages(image: KernelImage) -> list[str]:
    """apt-get download arguments: the headers and -common at the image's version, the
    linux-kbuild package its headers depend on at the newest version offered (older ones go)."""
    headers = f"linux-headers-{image.release}"
    show = _run(["apt-cache", "show", f"{headers}={image.version}"])
    depends = next((line.split(":", 1)[1] for line in show.splitlines() if line.startswith("Depends:")), "")
    wanted = [f"{headers}={image.version}"]
    for alternative in depends.split(","):
        name = alternative.split("|")[0].strip().split(" ")[0]
        if re.fullmatch(r"linux-headers-.*-common", name):
            wanted.append(f"{name}={image.version}")
        elif name.startswith("linux-kbuild-"):
            wanted.append(name)
    if len(wanted) != 3:
        raise ZooBuildError(f"{headers}={image.version}: no -common/kbuild dependency in {depends.strip()!r}")
    return wanted


def fetch_headers(image: KernelImage, cache: Path | None = None) -> Path:
    """The extracted, relocated headers tree of the image's kernel (the -M target of make)."""
    final = (cache or cache_root()) / "zoo" / "headers" / image.release
    tree = final / "usr" / "src" / f"linux-headers-{image.release}"
    if (tree / "Makefile").is_file():
        return tree
    with publish(final) as out, tempfile.TemporaryDirectory(prefix="pfz-zoo-debs-") as debs:
        _run(["apt-get", "download", *header_packages(image)], cwd=Path(debs))
        for deb in sorted(Path(debs).glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(out)])
        makefile = out / "usr" / "src" / f"linux-headers-{image.release}" / "Makefile"
        text = makefile.read_text()
        # "include /usr/src/linux-headers-<abi>-common/Makefile": point it at the final place.
        relocated = re.sub(r"^include /usr/src/", f"include {final}/usr/src/", text, flags=re.M)
        if relocated == text:
            raise ZooBuildError(f"{makefile}: no absolute include to relocate:\n{text}")
        makefile.write_text(relocated)
    return tree


def source_key(files: dict[str, bytes] | None = None) -> str:
    compiler = _run(["gcc", "--version"]).splitlines()[0]
    if files is None:
        parts = [compiler, " ".join(MAKE_VARS)] + [(ZOO_DIR / name).read_text() for name in SOURCES]
    else:
        parts = [compiler, " ".join(MAKE_VARS)] + [f"{name}\0{data.decode()}" for name, data in sorted(files.items())]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def build_zoo(image: KernelImage | str | None = None, cache: Path | None = None) -> Path:
    """zoo.ko for the kernel (a KernelImage or a pin name); built on first use, then cached."""
    image = image if isinstance(image, KernelImage) else resolve(image)
    final = (cache or cache_root()) / "zoo" / "ko" / image.release / source_key()
    return build_module(image, "zoo", {name: (ZOO_DIR / name).read_bytes() for name in SOURCES}, final, cache)


def build_module(image: KernelImage, name: str, files: dict[str, bytes], final: Path,
                 cache: Path | None = None) -> Path:
    """``<name>.ko`` built from ``files`` (file name -> contents, a Kbuild among them) against the
    image's headers, published in ``final`` (a directory keyed by the caller, see source_key)."""
    if (final / f"{name}.ko").is_file():
        return final / f"{name}.ko"
    tree = fetch_headers(image, cache)
    with publish(final) as out, tempfile.TemporaryDirectory(prefix=f"pfz-{name}-src-") as src:
        for file_name, data in files.items():
            (Path(src) / file_name).write_bytes(data)
        _run(["make", "-C", str(tree), f"M={src}", *MAKE_VARS, "modules"])
        shutil.copy(Path(src) / f"{name}.ko", out / f"{name}.ko")
    return final / f"{name}.ko"


def main(argv: list[str], build=build_zoo) -> int:
    """Builds (``build``: build_zoo or another module's builder) for each pin, timed."""
    for name in argv or [None]:
        started = time.monotonic()
        ko = build(name)
        print(f"{name or 'default'}: {ko} ({ko.stat().st_size} bytes, {time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
