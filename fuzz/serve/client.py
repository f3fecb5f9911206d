"""`procfuzz push URL DIR`: the finding directories below DIR, packed (fuzz/serve/upload.py),
posted to a service's ``/api/import``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from fuzz.errors import ToolError

from .upload import pack


def push(url: str, directory: Path, token: str | None = None, timeout: float = 300.0) -> dict:
    """The service's answer (findings added, bugs, follow-ups queued); ToolError with its reason
    if it refused the upload or could not be reached."""
    try:
        data = pack(directory)
    except ValueError as err:
        raise ToolError(str(err)) from None
    endpoint = url.rstrip("/") + "/api/import"
    request = urllib.request.Request(endpoint, data=data, method="POST",
                                     headers={"Content-Type": "application/gzip"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as err:
        raise ToolError(f"{endpoint}: {err.code} {_reason(err)}") from None
    except (urllib.error.URLError, OSError) as err:
        raise ToolError(f"{endpoint}: {getattr(err, 'reason', err)}") from None


def _reason(err: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(err.read()).get("error", err.reason))
    except (ValueError, AttributeError, OSError):
        return str(err.reason)
