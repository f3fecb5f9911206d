"""Tarballs of finding directories: packed by `procfuzz push`, checked and unpacked by the
service's ``POST /api/import``.

An upload is untrusted: it is read member by member without ``extractall``; only regular files
and directories with relative names that stay inside the upload pass (no ``..``, no absolute
path, no link, device or fifo); the member count, each member's size and the total unpacked
size are bounded, so a small gzip that would unpack to gigabytes is refused at the first
oversized header.  It is unpacked into a staging directory that is removed unless everything
checks out, and must hold at least one readable finding: a bad upload changes nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from reference.program import ProgramError

from fuzz.record import store
from fuzz.triage.bugs import finding_dirs


@dataclass(frozen=True)
class Limits:
    upload_bytes: int = 64 << 20       # the request body (compressed)
    members: int = 20000
    member_bytes: int = 16 << 20
    total_bytes: int = 512 << 20       # unpacked


class UploadError(Exception):
    """A refused upload: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def upload_id(data: bytes) -> str:
    """Uploads are named by their content: the same tarball twice is one import."""
    return hashlib.sha256(data).hexdigest()[:16]


def unpack(data: bytes, imports: Path, limits: Limits = Limits()) -> tuple[Path, bool]:
    """Check and unpack an upload into ``imports/<upload id>``; returns (that directory, whether
    it is new).  UploadError (4xx) if it is refused, nothing left behind."""
    if len(data) > limits.upload_bytes:
        raise UploadError(413, f"upload of {len(data)} bytes exceeds the limit of {limits.upload_bytes}")
    final = Path(imports) / upload_id(data)
    if final.is_dir():
        return final, False
    Path(imports).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=imports, prefix=".upload-"))
    try:
        _extract(data, staging, limits)
        _check_findings(staging)
        os.rename(staging, final)
        return final, True
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _extract(data: bytes, staging: Path, limits: Limits) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            count = total = 0
            for member in tar:
                count += 1
                total += member.size
                if count > limits.members:
                    raise UploadError(413, f"more than {limits.members} members")
                if member.size > limits.member_bytes or total > limits.total_bytes:
                    raise UploadError(413, f"{member.name!r}: unpacks beyond the size limits "
                                           f"({limits.member_bytes} bytes a file, {limits.total_bytes} in all)")
                _extract_member(tar, member, staging)
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:   # gzip and tar damage alike
        raise UploadError(400, f"not a readable tarball: {err}") from None


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, staging: Path) -> None:
    path = _safe_name(member.name)
    if member.isdir():
        (staging / path).mkdir(parents=True, exist_ok=True)
        return
    if not member.isfile():
        raise UploadError(400, f"{member.name!r}: only regular files and directories are accepted, "
                               "not links or devices")
    target = staging / path
    target.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    with open(target, "xb") as out:
        shutil.copyfileobj(source, out)


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name or "\0" in name or \
            path.parts[:1] == (".",) and len(path.parts) == 1:
        raise UploadError(400, f"{name!r}: member names must be relative paths inside the upload")
    return path


def _check_findings(staging: Path) -> None:
    found = finding_dirs([staging], warn=lambda text: None)
    if not found:
        raise UploadError(422, "no finding directories (…/findings/<program id>/) in the upload")
    for directory in found:
        try:
            store.load(directory)
        except ProgramError:
            raise UploadError(422, f"{directory.relative_to(staging.resolve())}: not a readable finding "
                                   "(procfuzz's finding files are missing or malformed)") from None


def pack(top: Path) -> bytes:
    """A gzipped tarball of every finding directory at or below ``top`` (their files only:
    corpus and summaries stay home), named relative to ``top``."""
    top = Path(top).resolve()
    found = finding_dirs([top], warn=lambda text: None)
    if not found:
        raise ValueError(f"{top}: no finding directories (…/findings/<program id>/)")
    return pack_findings(found, top)


def pack_findings(directories: list[Path], top: Path) -> bytes:
    """A gzipped tarball of these finding directories (below ``top``, named relative to it)."""
    top = Path(top).resolve()
    buffer = io.BytesIO()
    # The same findings pack to the same bytes (no time in the gzip header, no owner), so that
    # pushing a directory twice is one upload.
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed, \
            tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in directories:
            for path in sorted(Path(directory).resolve().rglob("*")):
                if path.is_file() and not path.is_symlink():
                    tar.add(path, arcname=str(path.relative_to(top)), recursive=False, filter=_anonymous)
    return buffer.getvalue()


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    return info
