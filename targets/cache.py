"""Where procfuzz keeps downloaded kernels and built guest images, and how entries are published.

Root: ``$PROCFUZZ_CACHE`` if set, else ``$XDG_CACHE_HOME/procfuzz``, else ``~/.cache/procfuzz``.
Every entry is built in a temporary directory beside its final place and renamed into place,
so a reader sees either nothing or a complete entry, even with concurrent builders.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def cache_root() -> Path:
    if os.environ.get("PROCFUZZ_CACHE"):
        return Path(os.environ["PROCFUZZ_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "procfuzz"


@contextlib.contextmanager
def publish(final: Path):
    """Yield a fresh temporary directory; on success rename it to ``final``.

    If another process published ``final`` first, ours is discarded: entries are keyed by
    their inputs, so both are equivalent.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    work.chmod(0o755)   # mkdtemp makes it private; cache entries are ordinary readable files
    try:
        yield work
        try:
            os.rename(work, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
