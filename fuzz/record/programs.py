"""Files on disk: program files and atomic writes.

Every write goes to a temporary file in the same directory and is renamed into place, so a
crash, SIGKILL or Ctrl-C never leaves a half-written file under its final name, and several
workers can share one directory.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from reference.program import MAX_TEXT_BYTES, Program, ProgramError, parse

PROGRAM_SUFFIXES = (".prog", ".json")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(err: BaseException) -> bool:
    """A write failed for want of space (or quota): the disk's fault, not the program's."""
    return isinstance(err, OSError) and err.errno in DISK_FULL


def atomic_write(path: Path, data: str | bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-" + path.name + "-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_program(path: Path) -> Program:
    """Read and validate one program file; every problem is a ProgramError naming the file."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_TEXT_BYTES * 4:
            raise ProgramError("file is too large to be a program", source=str(path))
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ProgramError("file is not UTF-8 text", source=str(path)) from None
    except OSError as err:
        raise ProgramError(f"cannot read: {err.strerror}", source=str(path)) from None
    return parse(text, source=str(path))


def program_files(directory: Path) -> list[Path]:
    return sorted(p for p in Path(directory).rglob("*")
                  if p.suffix in PROGRAM_SUFFIXES and p.is_file() and not p.name.startswith("."))


def load_directory(directory: Path) -> tuple[list[tuple[Path, Program]], list[ProgramError]]:
    """All valid programs of a directory; bad files are returned as errors, not raised."""
    programs, errors = [], []
    for path in program_files(directory):
        try:
            programs.append((path, load_program(path)))
        except ProgramError as err:
            errors.append(err)
    return programs, errors


def save_program(directory: Path, program: Program) -> Path:
    """Content-addressed: the file name is the program id, so saving twice is harmless."""
    path = Path(directory) / f"{program.id}.prog"
    if not path.exists():
        atomic_write(path, program.to_text())
    return path
