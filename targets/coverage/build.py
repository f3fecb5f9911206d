"""Build the coverage probe module (procfuzz_kcov.c) for a pinned kernel, with the pin's function
list compiled in (kcov_functions.h, generated here from targets/kernels/<package>.kcov.txt), with
the bug zoo's build helpers (Debian's headers, no kernel tree). Cached by sources + list.

Run as ``python -m targets.coverage.build [kernel-pin ...]`` to build it by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

from targets.cache import cache_root
from targets.coverage.lists import ProbeList, load_probe_list
from targets.kernels import KernelImage, resolve
from targets.zoo.build import build_module, main, source_key

PROBE_DIR = Path(__file__).parent
MODULE = "procfuzz_kcov"
SOURCES = (f"{MODULE}.c", "Kbuild")


def functions_header(probes: ProbeList) -> bytes:
    return "".join(f'KCOV_FN("{name}")\n' for name in probes.names).encode()


def build_probe(image: KernelImage | str | None = None, cache: Path | None = None) -> Path:
    """procfuzz_kcov.ko for the kernel (a KernelImage or a pin name), probing its pin's list."""
    image = image if isinstance(image, KernelImage) else resolve(image)
    files = {name: (PROBE_DIR / name).read_bytes() for name in SOURCES}
    files["kcov_functions.h"] = functions_header(load_probe_list(image.pinned.split("=", 1)[0]))
    final = (cache or cache_root()) / "kcov" / "ko" / image.release / source_key(files)
    return build_module(image, MODULE, files, final, cache)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], build_probe))
