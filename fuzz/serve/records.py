"""The service's records in the bug database (fuzz/serve/db.py): kernels, campaigns, stat
points, bugs and their findings, reproducibility per kernel, the follow-up queue.  Every query
of the service is here, in SQL both SQLite and PostgreSQL run; rows go out as dicts (the JSON
API serves them as they are, with the JSON text columns decoded)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from fuzz.triage.bugs import Bug

from .db import Cursor, Database

BUG_STATUSES = ("new", "known", "flaky", "unconfirmed", "fixed")
FOLLOW_UP_STATES = ("queued", "running", "done", "failed")


@dataclass(frozen=True)
class StatPoint:
    """A campaign's counters at the end of one time bucket (a minute by default)."""
    campaign_id: int
    minute: int                     # the bucket's start, seconds since the epoch
    programs: int
    programs_per_second: float
    features: int
    corpus: int
    restarts: int
    findings: int
    kernel_functions: int = 0       # probed kernel functions reached (kernels with kernel_coverage)


# ---- kernels and campaigns ------------------------------------------------------------------------

def ensure_kernel(db: Database, name: str, pin: str | None, zoo: str | None, label: str,
                  workers: int, leak_every: int) -> int:
    with db.transaction() as cur:
        row = cur.one("""INSERT INTO kernels (name, pin, zoo, label, workers, leak_every) VALUES (?, ?, ?, ?, ?, ?)
                         ON CONFLICT (name) DO UPDATE SET pin = excluded.pin, zoo = excluded.zoo,
                         label = excluded.label, workers = excluded.workers, leak_every = excluded.leak_every
                         RETURNING id""", (name, pin, zoo, label, workers, leak_every))
    return int(row["id"])


def set_kernel_enabled(db: Database, name: str, enabled: bool) -> bool:
    """Whether the kernel exists."""
    with db.transaction() as cur:
        return cur.one("UPDATE kernels SET enabled = ? WHERE name = ? RETURNING id", (int(enabled), name)) is not None


def kernels(db: Database) -> list[dict]:
    with db.transaction() as cur:
        return cur.all("SELECT * FROM kernels ORDER BY name")


def start_campaign(db: Database, kernel_id: int, out_dir: str, now: int) -> int:
    with db.transaction() as cur:
        return int(cur.one("INSERT INTO campaigns (kernel_id, started, out_dir) VALUES (?, ?, ?) RETURNING id",
                           (kernel_id, now, out_dir))["id"])


def end_campaign(db: Database, campaign_id: int, programs: int, findings: int, errors: list[str], now: int) -> None:
    with db.transaction() as cur:
        cur.execute("UPDATE campaigns SET ended = ?, programs = ?, findings = ?, errors = ? WHERE id = ?",
                    (now, programs, findings, "\n".join(errors)[:20000], campaign_id))


def close_open_campaigns(db: Database, now: int) -> int:
    """Campaigns a killed manager left open end now (start-up); returns how many."""
    with db.transaction() as cur:
        return len(cur.all("UPDATE campaigns SET ended = ? WHERE ended IS NULL RETURNING id", (now,)))


def campaigns(db: Database, limit: int = 50) -> list[dict]:
    with db.transaction() as cur:
        return cur.all("""SELECT c.*, k.name AS kernel FROM campaigns c JOIN kernels k ON k.id = c.kernel_id
                          ORDER BY c.id DESC LIMIT ?""", (limit,))


def add_stat_point(db: Database, point: StatPoint) -> None:
    """The bucket's latest counters (a later update in the same bucket replaces them)."""
    with db.transaction() as cur:
        cur.execute("""INSERT INTO stat_points (campaign_id, minute, programs, programs_per_second, features,
                       corpus, restarts, findings, kernel_functions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT (campaign_id, minute) DO UPDATE SET programs = excluded.programs,
                       programs_per_second = excluded.programs_per_second, features = excluded.features,
                       corpus = excluded.corpus, restarts = excluded.restarts, findings = excluded.findings,
                       kernel_functions = excluded.kernel_functions""",
                    (point.campaign_id, point.minute, point.programs, point.programs_per_second,
                     point.features, point.corpus, point.restarts, point.findings, point.kernel_functions))


def stat_points(db: Database, since: int = 0) -> list[dict]:
    """Every point since ``since``, with its kernel's name, oldest first."""
    with db.transaction() as cur:
        return cur.all("""SELECT s.*, k.name AS kernel FROM stat_points s JOIN campaigns c ON c.id = s.campaign_id
                          JOIN kernels k ON k.id = c.kernel_id WHERE s.minute >= ? ORDER BY s.minute, k.name, s.campaign_id""",
                       (since,))


# ---- bugs and findings ----------------------------------------------------------------------------

@dataclass(frozen=True)
class FindingFacts:
    """What the findings table keeps of a finding directory besides its bug."""
    source: str                     # "campaign <kernel name>" or "import <upload id>"
    kernel: str                     # the kernel label it ran on
    recorded: int


def save_bug(cur: Cursor, bug: Bug, facts: dict[str, FindingFacts], assigned: dict[str, str] | None = None) -> int:
    """Insert or refresh a triaged bug and its findings (``facts`` by finding directory);
    returns the bug's id.  A bug marked fixed stays fixed.  Finding rows already under this
    bug in ``assigned`` (directory -> bug key, see finding_bug_keys) are left as they are."""
    row = cur.one("""INSERT INTO bugs (bug_key, cls, signatures, status, first_seen, last_seen, count, kernels,
                     note, representative) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                     ON CONFLICT (bug_key) DO UPDATE SET cls = excluded.cls, signatures = excluded.signatures,
                     status = CASE WHEN bugs.status = 'fixed' THEN bugs.status ELSE excluded.status END,
                     first_seen = excluded.first_seen, last_seen = excluded.last_seen, count = excluded.count,
                     kernels = excluded.kernels, note = excluded.note, representative = excluded.representative
                     RETURNING id""",
                  (bug.signature, bug.cls, json.dumps(bug.symptoms), triage_status(bug), bug.first_seen,
                   bug.last_seen, bug.count, json.dumps(bug.kernels), bug.note, str(bug.directory)))
    bug_id = int(row["id"])
    assigned = assigned or {}
    for directory in map(str, bug.directories):
        if assigned.get(directory) == bug.signature:
            continue
        fact = facts.get(directory, FindingFacts("", "", 0))
        cur.execute("""INSERT INTO findings (bug_id, program_id, directory, kernel, recorded, source)
                       VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (directory) DO UPDATE SET bug_id = excluded.bug_id""",
                    (bug_id, directory.rsplit("/", 1)[-1], directory, fact.kernel, fact.recorded, fact.source))
    return bug_id


def triage_status(bug: Bug) -> str:
    """new, known or unconfirmed as triage says; flaky when re-runs showed it but never reliably."""
    status = bug.status().split()[0]
    counts = bug.reproducibility.values()
    if status == "new" and counts and not any(runs and diverged == runs for diverged, runs in counts):
        return "flaky"
    return status


def finding_keys(db: Database) -> set[tuple[str, str]]:
    """(program id, kernel label) of every finding: the same finding, whatever upload it came in."""
    with db.transaction() as cur:
        return {(row["program_id"], row["kernel"]) for row in cur.all("SELECT program_id, kernel FROM findings")}


def finding_bug_keys(db: Database) -> dict[str, str]:
    """Every finding directory and the key of the bug it is filed under."""
    with db.transaction() as cur:
        return {row["directory"]: row["bug_key"]
                for row in cur.all("SELECT f.directory, b.bug_key FROM findings f JOIN bugs b ON b.id = f.bug_id")}


def known_directories(db: Database) -> set[str]:
    with db.transaction() as cur:
        return {row["directory"] for row in cur.all("SELECT directory FROM findings")}


def forget_findings(db: Database, directories: set[str]) -> None:
    """Rows of findings whose directory is gone (start-up reconciliation); a bug left without
    findings goes too, so that the database never holds what the disk does not."""
    with db.transaction() as cur:
        for directory in sorted(directories):
            cur.execute("DELETE FROM findings WHERE directory = ?", (directory,))
        orphans = "(SELECT id FROM bugs WHERE id NOT IN (SELECT bug_id FROM findings))"
        for table in ("reproducibility", "follow_ups"):
            cur.execute(f"DELETE FROM {table} WHERE bug_id IN {orphans}")
        cur.execute(f"DELETE FROM bugs WHERE id IN {orphans}")


def bugs(db: Database, status: str | None = None, cls: str | None = None, kernel: str | None = None,
         text: str | None = None, limit: int = 500) -> list[dict]:
    """Bugs, newest seen first, filtered by status, class, a kernel label substring and a
    substring of the key."""
    where, params = ["1 = 1"], []
    for column, value in (("status", status), ("cls", cls)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    for column, value in (("kernels", kernel), ("bug_key", text)):
        if value:
            where.append(f"{column} LIKE ?")
            params.append(f"%{value}%")
    with db.transaction() as cur:
        rows = cur.all(f"SELECT * FROM bugs WHERE {' AND '.join(where)} ORDER BY last_seen DESC, id LIMIT ?",
                       (*params, limit))
    return [_decoded(row) for row in rows]


def bug(db: Database, bug_id: int) -> dict | None:
    """One bug with its findings, reproducibility per kernel and follow-up."""
    with db.transaction() as cur:
        row = cur.one("SELECT * FROM bugs WHERE id = ?", (bug_id,))
        if row is None:
            return None
        row = _decoded(row)
        row["findings"] = cur.all("SELECT * FROM findings WHERE bug_id = ? ORDER BY recorded, id", (bug_id,))
        row["reproducibility"] = cur.all("SELECT * FROM reproducibility WHERE bug_id = ? ORDER BY kernel", (bug_id,))
        row["follow_up"] = cur.one("SELECT * FROM follow_ups WHERE bug_id = ?", (bug_id,))
    followed = row["follow_up"]["directory"] if row["follow_up"] else ""
    row["artifacts"] = followed or row["representative"]      # where its minimised program and C are
    return row


def finding(db: Database, finding_id: int) -> dict | None:
    with db.transaction() as cur:
        return cur.one("SELECT * FROM findings WHERE id = ?", (finding_id,))


def _decoded(row: dict) -> dict:
    return {**row, "signatures": json.loads(row["signatures"]), "kernels": json.loads(row["kernels"])}


def counts(db: Database) -> dict:
    """Bugs per status and findings in all, for the status line."""
    with db.transaction() as cur:
        per_status = {row["status"]: int(row["n"]) for row in
                      cur.all("SELECT status, COUNT(*) AS n FROM bugs GROUP BY status")}
        findings_total = int(cur.one("SELECT COUNT(*) AS n FROM findings")["n"])
    return {"bugs": {status: per_status.get(status, 0) for status in BUG_STATUSES}, "findings": findings_total}


# ---- reproducibility and the follow-up queue ------------------------------------------------------

def record_reproducibility(db: Database, bug_id: int, rows: list[tuple[str, str, int, int]], now: int) -> None:
    """(kernel label, kernel as configured: pin and zoo bug, diverged, runs) per kernel.  0 of N
    where an older label of the same configured kernel (an earlier package of the pin)
    reproduced reliably marks the bug fixed on that kernel, and fixed when nothing else still
    reproduces it."""
    with db.transaction() as cur:
        for label, pin, diverged, runs in rows:
            before = cur.all("SELECT * FROM reproducibility WHERE bug_id = ? AND pin = ? AND kernel <> ?",
                             (bug_id, pin, label))
            fixed = diverged == 0 and any(r["runs"] and r["diverged"] == r["runs"] for r in before)
            cur.execute("""INSERT INTO reproducibility VALUES (?, ?, ?, ?, ?, ?, ?)
                           ON CONFLICT (bug_id, kernel) DO UPDATE SET diverged = excluded.diverged,
                           runs = excluded.runs, checked = excluded.checked, fixed = excluded.fixed""",
                        (bug_id, label, pin, diverged, runs, now, int(fixed)))
        latest = [label for label, _, diverged, _ in rows if diverged]
        if any(r["fixed"] for r in cur.all("SELECT fixed FROM reproducibility WHERE bug_id = ?", (bug_id,))) \
                and not latest:
            cur.execute("UPDATE bugs SET status = 'fixed' WHERE id = ?", (bug_id,))


def enqueue_follow_up(cur: Cursor, bug_id: int, now: int) -> bool:
    """Queue a bug once (a bug followed up before is not queued again); whether it was queued."""
    return cur.one("""INSERT INTO follow_ups (bug_id, state, updated) VALUES (?, 'queued', ?)
                      ON CONFLICT (bug_id) DO NOTHING RETURNING bug_id""", (bug_id, now)) is not None


def set_follow_up(db: Database, bug_id: int, state: str, step: str, detail: str, now: int,
                  directory: str | None = None) -> None:
    """``directory``: the finding followed up, whose artifacts the bug shows (its representative
    then; a smaller finding may become the representative later)."""
    with db.transaction() as cur:
        cur.execute("UPDATE follow_ups SET state = ?, step = ?, detail = ?, updated = ?, "
                    "directory = COALESCE(?, directory) WHERE bug_id = ?",
                    (state, step, detail[:4000], now, directory, bug_id))


def next_follow_up(db: Database) -> dict | None:
    """The oldest queued follow-up with its bug's representative directory."""
    with db.transaction() as cur:
        return cur.one("""SELECT f.bug_id, b.representative, b.bug_key FROM follow_ups f JOIN bugs b ON b.id = f.bug_id
                          WHERE f.state = 'queued' ORDER BY f.updated, f.bug_id LIMIT 1""")


def requeue_running(db: Database, now: int) -> int:
    """Follow-ups a killed manager left running start again (start-up); returns how many."""
    with db.transaction() as cur:
        return len(cur.all("UPDATE follow_ups SET state = 'queued', updated = ? WHERE state = 'running' RETURNING bug_id",
                           (now,)))


def requeue_outdated(db: Database, stock_labels: dict[str, str], now: int) -> int:
    """Follow up again the bugs that reproduced reliably on a pin which now names another
    package (``stock_labels``: pin name -> its stock kernel label today): the re-run on the
    newer kernel tells whether they are fixed.  Returns how many were queued."""
    with db.transaction() as cur:
        rows = cur.all("""SELECT r.bug_id, r.kernel, r.pin FROM reproducibility r JOIN follow_ups f ON f.bug_id = r.bug_id
                          WHERE r.runs > 0 AND r.diverged = r.runs AND f.state IN ('done', 'failed')""")
        outdated = {row["bug_id"] for row in rows
                    if stock_labels.get(row["pin"].split(" +", 1)[0]) not in (None, "", row["kernel"].split(" +", 1)[0])}
        for bug_id in sorted(outdated):
            cur.execute("UPDATE follow_ups SET state = 'queued', updated = ? WHERE bug_id = ?", (now, bug_id))
    return len(outdated)


def follow_ups(db: Database) -> list[dict]:
    with db.transaction() as cur:
        return cur.all("""SELECT f.*, b.bug_key FROM follow_ups f JOIN bugs b ON b.id = f.bug_id
                          ORDER BY f.updated DESC LIMIT 100""")


def follow_up_counts(db: Database) -> dict:
    with db.transaction() as cur:
        per_state = {row["state"]: int(row["n"]) for row in
                     cur.all("SELECT state, COUNT(*) AS n FROM follow_ups GROUP BY state")}
    return {state: per_state.get(state, 0) for state in FOLLOW_UP_STATES}
