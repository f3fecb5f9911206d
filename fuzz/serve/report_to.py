"""`procfuzz run --report-to URL`: a campaign that reports to a `procfuzz serve` as it goes.

The run still writes its own OUT (nothing depends on the service being there).  A thread posts
the campaign's counters every few seconds (``/api/workers/<name>/stats``) and each finding
directory as the store renames it into place (``/api/import``, one finding an upload); the
names of the findings the service took are appended to ``OUT/reported``, so a worker restarted
on the same OUT does not send them again.  Given the working corpus, it also shares it through
the service's hub (``/api/corpus/<kernel set>``): the programs the campaign adds go up
(``OUT/reported-corpus``), those other campaigns of the same kernel added come down into the
working corpus (``OUT/hub-cursor``: how many it has seen), where the workers pick them up.  A service that cannot be reached or answers 5xx is
retried with a growing pause (up to a minute) while the campaign goes on: what it has not taken
stays on disk and goes when it is back.  A refusal of the token (401/403) stops the reporting,
never the fuzzing.  The service takes a finding once, whatever upload repeats it, so a crash
between a post and the ledger line costs nothing; `procfuzz push URL OUT` sends whatever is
left after the campaign.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import threading
from pathlib import Path

from reference.program import ProgramError, parse

from fuzz.campaign.run import RunOptions
from fuzz.record.programs import atomic_write, program_files, save_program
from fuzz.record.summary import Stats
from fuzz.triage.bugs import finding_dirs

from .client import ServiceError, get, post
from .hub import MAX_PROGRAMS_A_POST
from .upload import pack_findings

LEDGER = "reported"
CORPUS_LEDGER = "reported-corpus"
CURSOR = "hub-cursor"
MAX_PAUSE = 60.0
POST_BYTES = 512 << 10          # a corpus post stays well under the hub's 1 MiB
PULL_PAGES = 10                 # hub pages taken a flush, at most


EXCHANGE_SECONDS = 30.0        # how often a reporting campaign's workers look for the hub's programs


def reporting_campaign(url: str, options: RunOptions, token: str | None,
                       name: str | None = None) -> tuple[RunOptions, "Reporter"]:
    """The campaign's options with the corpus exchange on, and its Reporter (named after the
    host and the shard unless ``name`` is given)."""
    name = name or socket.gethostname() + (f"-{options.shard.dirname}" if options.shard else "")
    options = dataclasses.replace(options, exchange_every=EXCHANGE_SECONDS)
    return options, Reporter(url, options.out_dir, name, options.kernel.label, token, corpus=options.working_corpus)


def kernel_set(label: str) -> str:
    """The hub's name for the campaigns of a kernel label."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", label).strip("_.+-")[:100] or "default"


class Reporter:
    def __init__(self, url: str, out: Path, worker: str, kernel: str, token: str | None = None,
                 every: float = 5.0, timeout: float = 30.0, corpus: Path | None = None):
        self.url, self.out, self.worker, self.kernel, self.token = url, Path(out), worker, kernel, token
        self.corpus = Path(corpus) if corpus else None
        self.every, self.timeout = every, timeout
        self.sent = 0                        # findings the service took in this run
        self.error: str | None = None        # the last failure, None after a success
        self.refused = False                 # the token was refused: no more posts
        self._stats: Stats | None = None
        self._pause = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="report-to", daemon=True)

    def update(self, stats: Stats) -> None:
        """The campaign's latest counters (its on_update callback)."""
        self._stats = stats

    def __enter__(self) -> "Reporter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.flush()                         # the last counters and findings, one attempt

    def pending(self) -> list[Path]:
        """Finding directories of OUT the service has not taken yet."""
        done = self._ledger()
        return [d for d in sorted(finding_dirs([self.out], lambda text: None)) if d.name not in done]

    def flush(self) -> bool:
        """Post the counters and every pending finding; whether all went."""
        if self.refused:
            return False
        try:
            if self._stats is not None:
                body = json.dumps({"kernel": self.kernel, "stats": self._stats.to_json()}).encode()
                post(self.url, f"/api/workers/{self.worker}/stats", body, "application/json", self.token, self.timeout)
            for directory in self.pending():
                post(self.url, "/api/import", pack_findings([directory], self.out), "application/gzip",
                     self.token, self.timeout)
                self._record(LEDGER, directory.name)
                self.sent += 1
            if self.corpus is not None:
                self._share_corpus()
                self._pull_corpus()
        except ServiceError as err:
            self.error = str(err)
            self.refused = err.status in (401, 403)
            return False
        self.error = None
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self._pause):
            self._pause = self.every if self.flush() else min(self._pause * 2, MAX_PAUSE)
            if self.refused:
                return

    def _share_corpus(self) -> None:
        """Post the working corpus's programs the hub has not had from us, in bounded batches."""
        shared = self._ledger(CORPUS_LEDGER)
        batch, size = [], 0
        for path in program_files(self.corpus):
            if path.name in shared:
                continue
            text = path.read_text()
            if batch and (len(batch) == MAX_PROGRAMS_A_POST or size + len(text) > POST_BYTES):
                self._post_programs(batch)
                batch, size = [], 0
            batch.append((path.name, text))
            size += len(text)
        if batch:
            self._post_programs(batch)

    def _post_programs(self, batch: list[tuple[str, str]]) -> None:
        body = json.dumps({"programs": [text for _, text in batch]}).encode()
        post(self.url, f"/api/corpus/{kernel_set(self.kernel)}", body, "application/json", self.token, self.timeout)
        self._record(CORPUS_LEDGER, *(name for name, _ in batch))

    def _pull_corpus(self) -> None:
        """Other campaigns' programs from the hub into the working corpus."""
        try:
            cursor = int((self.out / CURSOR).read_text())
        except (FileNotFoundError, ValueError):
            cursor = 0
        for _ in range(PULL_PAGES):
            page = get(self.url, f"/api/corpus/{kernel_set(self.kernel)}?since={cursor}", self.timeout)
            programs, following = (page.get("programs"), page.get("next")) if isinstance(page, dict) else (None, None)
            if not isinstance(programs, list) or not isinstance(following, int) or following < cursor:
                raise ServiceError(f"{self.url}: a malformed hub page")
            if not programs:
                return
            taken = []
            for text in programs:
                try:
                    taken.append(save_program(self.corpus, parse(str(text), "hub program")).name)
                except ProgramError:
                    pass                     # the hub parsed it; a newer program format would land here
            self._record(CORPUS_LEDGER, *taken)      # ours already, or theirs: not to be sent back
            cursor = following
            atomic_write(self.out / CURSOR, str(cursor))

    def _ledger(self, name: str = LEDGER) -> set[str]:
        try:
            return set((self.out / name).read_text().split())
        except FileNotFoundError:
            return set()

    def _record(self, ledger_name: str, *names: str) -> None:
        if not names:
            return
        with open(self.out / ledger_name, "a") as ledger:
            ledger.write("".join(name + "\n" for name in names))
            ledger.flush()
            os.fsync(ledger.fileno())

    def describe(self) -> str:
        left = len(self.pending())
        state = f"refused: {self.error}" if self.refused else (self.error or "ok")
        return (f"reported to {self.url}: {self.sent} finding(s) sent, {left} not taken yet ({state})"
                + (f"; `procfuzz push {self.url} {self.out}` sends them" if left else ""))
