"""The corpus hub of `procfuzz serve`: campaigns that report here (`run --report-to`) post the
programs they add to their corpus and pull those of the other campaigns of the same kernel set,
as syzkaller's managers do through syz-hub.  Per set, programs are kept in the order they came
(``STATE/hub/<set>/<n>-<program id>.prog``); a reader asks for those after a cursor (how many it
has seen).  Posted text is untrusted: bounded in count and size, parsed with the program
parser; one bad program refuses the whole post, so nothing is half-taken."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

from reference.program import ProgramError, parse

from fuzz.record.programs import atomic_write

SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
MAX_POST_BYTES = 1 << 20
MAX_PROGRAMS_A_POST = 100
PAGE = 200


class HubError(ValueError):
    """A refused post or request (answered 400; nothing is kept)."""


class CorpusHub:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._sets: dict[str, list[tuple[str, Path]]] = {}      # set -> [(program id, file)] in order
        self._lock = threading.Lock()

    def add(self, name: str, body: bytes) -> dict:
        """JSON {"programs": [program text, ...]}: the ones the set did not have are appended."""
        if len(body) > MAX_POST_BYTES:
            raise HubError(f"a post of {len(body)} bytes exceeds {MAX_POST_BYTES}")
        try:
            texts = json.loads(body)["programs"]
        except (ValueError, KeyError, TypeError) as err:
            raise HubError(f"malformed post: {err}") from None
        if not isinstance(texts, list) or len(texts) > MAX_PROGRAMS_A_POST or not all(isinstance(t, str) for t in texts):
            raise HubError(f"programs must be a list of at most {MAX_PROGRAMS_A_POST} texts")
        try:
            programs = [parse(text, "posted program") for text in texts]
        except ProgramError as err:
            raise HubError(str(err)) from None
        with self._lock:
            entries = self._entries(name)
            have = {program_id for program_id, _ in entries}
            added = 0
            for program in programs:
                if program.id not in have:
                    path = self._dir(name) / f"{len(entries):08d}-{program.id}.prog"
                    atomic_write(path, program.to_text())
                    entries.append((program.id, path))
                    have.add(program.id)
                    added += 1
        return {"added": added, "programs": len(entries)}

    def since(self, name: str, cursor: int) -> dict:
        """The programs after ``cursor`` (at most a page) and the cursor to ask with next."""
        if cursor < 0:
            raise HubError("since must be >= 0")
        with self._lock:
            page = self._entries(name)[cursor:cursor + PAGE]
        return {"programs": [path.read_text() for _, path in page], "next": cursor + len(page)}

    def _dir(self, name: str) -> Path:
        if not SET_NAME.fullmatch(name):
            raise HubError(f"bad kernel set name {name[:120]!r}")
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def _entries(self, name: str) -> list[tuple[str, Path]]:
        if name not in self._sets:
            files = sorted(self._dir(name).glob("*.prog"))
            self._sets[name] = [(path.stem.split("-", 1)[1], path) for path in files]
        return self._sets[name]
