"""Talking to a `procfuzz serve`: `procfuzz push URL DIR` (the finding directories below DIR,
packed by fuzz/serve/upload.py, posted to ``/api/import``) and the posts of a campaign that
reports as it goes (report_to.py)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from fuzz.errors import ToolError

from .upload import pack


class ServiceError(ToolError):
    """The service refused a request (``status``: its HTTP status) or could not be reached
    (``status`` None)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def post(url: str, path: str, data: bytes, content_type: str, token: str | None = None,
         timeout: float = 300.0) -> dict:
    """The service's JSON answer to a POST of ``data`` to ``path``; ServiceError if it refused."""
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method="POST",
                                     headers={"Content-Type": content_type})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    return _call(request, timeout)


def get(url: str, path: str, timeout: float = 60.0):
    """The service's JSON answer to a GET of ``path``; ServiceError if it refused."""
    return _call(urllib.request.Request(url.rstrip("/") + path), timeout)


def _call(request: urllib.request.Request, timeout: float):
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as err:
        raise ServiceError(f"{request.full_url}: {err.code} {_reason(err)}", err.code) from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise ServiceError(f"{request.full_url}: {getattr(err, 'reason', err)}") from None


def push(url: str, directory: Path, token: str | None = None, timeout: float = 300.0) -> dict:
    """The service's answer (findings added, bugs, follow-ups queued); ToolError with its reason
    if it refused the upload or could not be reached."""
    try:
        data = pack(directory)
    except ValueError as err:
        raise ToolError(str(err)) from None
    return post(url, "/api/import", data, "application/gzip", token, timeout)


def _reason(err: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(err.read()).get("error", err.reason))
    except (ValueError, AttributeError, OSError):
        return str(err.reason)
