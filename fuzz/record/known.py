"""Known issues: signatures already understood (a documented kernel inconsistency, or a bug
already reported), each with a note.  A campaign does not count them as new."""

from __future__ import annotations

import tomllib
from pathlib import Path

from reference.program import ProgramError


def load_known(path: Path) -> dict[str, str]:
    """signature -> note. A missing file means no known issues; a malformed one is an error."""
    return {signature: note for signature, (note, _) in load_known_issues(path).items()}


def load_known_issues(path: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    """signature -> (note, kernels it is known on; empty: any kernel)."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ProgramError(f"malformed known-issues file: {err}", source=str(path)) from None
    known = {}
    for index, entry in enumerate(doc.get("issue", [])):
        if not isinstance(entry, dict) or not isinstance(entry.get("signature"), str):
            raise ProgramError(f"issue {index} needs a 'signature' string", source=str(path))
        kernels = entry.get("kernels", [])
        if not isinstance(kernels, list) or not all(isinstance(k, str) for k in kernels):
            raise ProgramError(f"issue {index}: 'kernels' must be a list of kernel labels", source=str(path))
        known[entry["signature"]] = (str(entry.get("note", "")), tuple(kernels))
    return known
