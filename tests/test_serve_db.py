"""The bug database against SQLite and a real PostgreSQL: schema versions, import of finding
directories as triage groups them (idempotent), reconciliation with the disk, reproducibility
and fixed bugs, stat points, the follow-up queue; and the upload checks."""

import io
import sqlite3
import tarfile
import time

import pytest

from fuzz.record import store
from fuzz.record.known import KnownIssue, KnownIssues
from fuzz.serve import records
from fuzz.serve.db import MIGRATIONS, Database, DatabaseError
from fuzz.serve.importer import FindingCache, import_findings, reconcile
from fuzz.triage.bugs import read_finding
from fuzz.serve.upload import Limits, UploadError, pack, unpack
from reference.program import parse_text
from test_serve_fakes import STALE, postgres_url, record_finding  # noqa: F401 - a fixture

OTHER = parse_text("m1 = mount_proc p1\np2 = spawn p1\np3 = spawn p2\nexit p2\nexit p3\nreap p1 p2\n"
                   "lookup p1 {m1}/{p2}\n")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        database = Database(tmp_path / "bugs.sqlite3")
    else:
        database = Database(request.getfixturevalue("postgres_url"))
        with database.transaction() as cur:         # one server for the session: start empty
            for table in ("stat_points", "campaigns", "kernels", "follow_ups", "reproducibility", "findings", "bugs"):
                cur.execute(f"DELETE FROM {table}")
    yield database
    database.close()


def test_migrations_run_once_and_a_newer_schema_is_refused(db, tmp_path):
    assert db.migrate() == len(MIGRATIONS)
    with db.transaction() as cur:
        assert cur.one("SELECT version FROM schema_version")["version"] == len(MIGRATIONS)
    if db.dialect == "sqlite":
        path = tmp_path / "newer.sqlite3"
        Database(path).close()
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE schema_version SET version = 99")
        with pytest.raises(DatabaseError, match="newer than this procfuzz"):
            Database(path)


def test_sqlite_is_in_wal_mode(tmp_path):
    Database(tmp_path / "bugs.sqlite3").close()
    with sqlite3.connect(tmp_path / "bugs.sqlite3") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_import_groups_findings_into_bugs_once(db, tmp_path):
    run = tmp_path / "run"
    first = record_finding(run)
    record_finding(run, OTHER)
    imported = import_findings(db, {run: "campaign zoo"}, KnownIssues(), now=1000)
    assert len(imported.findings) == 2 and len(imported.queued) == imported.bugs
    again = import_findings(db, {run: "campaign zoo"}, KnownIssues(), now=1001)
    assert (again.findings, again.queued) == (frozenset(), ())
    bugs = records.bugs(db)
    assert {b["status"] for b in bugs} == {"new"} and sum(b["count"] for b in bugs) == 2
    bug = records.bug(db, next(b["id"] for b in bugs if b["representative"] == str(first)))
    assert bug["findings"][0]["source"] == "campaign zoo" and bug["findings"][0]["kernel"].endswith("+zoo:stale_pid")
    assert records.next_follow_up(db)["bug_id"] in imported.queued


def test_an_import_with_a_cache_reads_only_the_new_findings_and_files_them_alike(db, tmp_path):
    reads = []
    cache = FindingCache(lambda directory, known: reads.append(directory.name) or read_finding(directory, known))
    run = tmp_path / "run"
    known = KnownIssues()
    first = record_finding(run)
    import_findings(db, {run: "x"}, known, now=1, cache=cache)
    second = record_finding(run, OTHER)
    imported = import_findings(db, {run: "x"}, known, now=2, cache=cache)
    assert reads == [first.name, second.name] and imported.findings == {str(second)}
    # the same database as one import of both without a cache
    fresh = Database(tmp_path / "fresh.sqlite3")
    import_findings(fresh, {run: "x"}, KnownIssues(), now=2)
    rows = lambda database: sorted((b["bug_key"], b["count"], b["representative"]) for b in records.bugs(database))
    assert rows(db) == rows(fresh) and records.finding_bug_keys(db) == records.finding_bug_keys(fresh)
    # classified again when the known issues change
    import_findings(db, {run: "x"}, KnownIssues(), now=3, refresh=True, cache=cache)
    assert len(reads) == 4


def test_known_issues_are_known_and_not_followed_up(db, tmp_path):
    directory = record_finding(tmp_path / "run")
    finding = store.load(directory)
    known = KnownIssues((KnownIssue(finding.signature, "understood", (), finding.divergence.expected,
                                    finding.divergence.actual),))
    imported = import_findings(db, {tmp_path / "run": "x"}, known, now=1)
    assert imported.queued == () and records.bugs(db)[0]["status"] == "known"


def test_reconcile_forgets_findings_whose_directory_is_gone(db, tmp_path):
    import shutil
    directory = record_finding(tmp_path / "run")
    import_findings(db, {tmp_path / "run": "x"}, KnownIssues(), now=1)
    shutil.rmtree(directory)
    assert reconcile(db) == 1
    assert records.bugs(db) == [] and records.counts(db)["findings"] == 0


def test_a_bug_that_stops_reproducing_on_a_newer_package_is_fixed(db, tmp_path):
    record_finding(tmp_path / "run")
    bug_id = import_findings(db, {tmp_path / "run": "x"}, KnownIssues(), now=1).queued[0]
    records.record_reproducibility(db, bug_id, [("k=1 +zoo:b", "6.1 +zoo:b", 5, 5), ("k=1", "6.1", 0, 5)], 10)
    assert records.bug(db, bug_id)["status"] == "new"
    records.record_reproducibility(db, bug_id, [("k=2 +zoo:b", "6.1 +zoo:b", 0, 5)], 20)
    bug = records.bug(db, bug_id)
    assert bug["status"] == "fixed"
    assert {r["kernel"]: r["fixed"] for r in bug["reproducibility"]} == {"k=1 +zoo:b": 0, "k=1": 0, "k=2 +zoo:b": 1}
    import_findings(db, {tmp_path / "run": "x"}, KnownIssues(), now=30, refresh=True)
    assert records.bug(db, bug_id)["status"] == "fixed"          # triage does not undo it


def test_kernels_campaigns_and_stat_points(db):
    kernel_id = records.ensure_kernel(db, "zoo", "6.1-cloud", "stale_pid", "label", 1, 10)
    assert records.ensure_kernel(db, "zoo", "6.1-cloud", "stale_pid", "label", 2, 10) == kernel_id
    campaign = records.start_campaign(db, kernel_id, "/out", 100)
    for minute, programs in ((60, 10), (120, 30), (120, 50)):
        records.add_stat_point(db, records.StatPoint(campaign, minute, programs, 1.5, 7, 3, 0, 1))
    assert [(p["minute"], p["programs"], p["kernel"]) for p in records.stat_points(db)] == [(60, 10, "zoo"), (120, 50, "zoo")]
    assert records.close_open_campaigns(db, 200) == 1
    assert records.campaigns(db)[0]["ended"] == 200
    assert records.set_kernel_enabled(db, "zoo", False) and not records.kernels(db)[0]["enabled"]
    assert not records.set_kernel_enabled(db, "nonesuch", False)


def test_follow_ups_left_running_start_again(db, tmp_path):
    record_finding(tmp_path / "run")
    bug_id = import_findings(db, {tmp_path / "run": "x"}, KnownIssues(), now=1).queued[0]
    records.set_follow_up(db, bug_id, "running", "minimise", "", 2, "/dir")
    assert records.next_follow_up(db) is None
    assert records.requeue_running(db, 3) == 1
    assert records.next_follow_up(db)["bug_id"] == bug_id
    assert records.follow_up_counts(db)["queued"] == 1


# ---- uploads -------------------------------------------------------------------------------------

def tarball(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def member(name: str, kind=tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def good_upload(tmp_path) -> bytes:
    record_finding(tmp_path / "night" / "shard-0")
    return pack(tmp_path / "night")


def test_a_good_upload_unpacks_once(tmp_path):
    data = good_upload(tmp_path)
    directory, new = unpack(data, tmp_path / "imports")
    assert new and (directory / "shard-0" / "findings" / STALE.id).is_dir()
    assert unpack(data, tmp_path / "imports") == (directory, False)


@pytest.mark.parametrize("members, status, words", [
    ([(member("../evil"), b"x")], 400, "inside the upload"),
    ([(member("/etc/evil"), b"x")], 400, "inside the upload"),
    ([(member("a/../../evil"), b"x")], 400, "inside the upload"),
    ([(member("findings/link", tarfile.SYMTYPE, "/etc/passwd"), b"")], 400, "not links"),
    ([(member("findings/hard", tarfile.LNKTYPE, "/etc/passwd"), b"")], 400, "not links"),
    ([(member("findings/dev", tarfile.CHRTYPE), b"")], 400, "not links"),
    ([(member("findings/x/readme"), b"hello")], 422, "not a readable finding"),
    ([(member("run/readme"), b"hello")], 422, "no finding directories"),
    ([(member("big"), b"\0" * 2048)], 413, "size limits"),
    ([(member(f"f{i}"), b"x") for i in range(30)], 413, "more than 20 members"),
])
def test_bad_uploads_are_refused_and_change_nothing(tmp_path, members, status, words):
    imports = tmp_path / "imports"
    with pytest.raises(UploadError, match=words) as err:
        unpack(tarball(*members), imports, Limits(members=20, member_bytes=1024, total_bytes=4096))
    assert err.value.status == status
    assert not imports.exists() or list(imports.iterdir()) == []


def test_a_tar_bomb_stops_at_the_total_size(tmp_path):
    bomb = tarball(*[(member(f"z{i}"), b"\0" * 1000) for i in range(10)])      # compresses to almost nothing
    with pytest.raises(UploadError, match="size limits") as err:
        unpack(bomb, tmp_path / "imports", Limits(total_bytes=5000))
    assert err.value.status == 413 and list((tmp_path / "imports").iterdir()) == []


def test_oversized_and_damaged_uploads_are_refused(tmp_path):
    data = good_upload(tmp_path)
    with pytest.raises(UploadError) as err:
        unpack(data, tmp_path / "imports", Limits(upload_bytes=len(data) - 1))
    assert err.value.status == 413
    with pytest.raises(UploadError, match="not a readable tarball") as err:
        unpack(data[: len(data) // 2], tmp_path / "imports")
    assert err.value.status == 400
    with pytest.raises(UploadError) as err:
        unpack(b"plain text, not a tarball", tmp_path / "imports")
    assert err.value.status == 400
    assert list((tmp_path / "imports").iterdir()) == []


def test_a_pin_that_moves_to_a_newer_package_follows_reliable_bugs_up_again(db, tmp_path):
    record_finding(tmp_path / "run")
    bug_id = import_findings(db, {tmp_path / "run": "x"}, KnownIssues(), now=1).queued[0]
    records.record_reproducibility(db, bug_id, [("k=1 +zoo:b", "6.1 +zoo:b", 5, 5), ("k=1", "6.1", 0, 5)], 10)
    records.set_follow_up(db, bug_id, "done", "", "", 11)
    assert records.requeue_outdated(db, {"6.1": "k=1"}, 12) == 0
    assert records.requeue_outdated(db, {"6.12": "j=2"}, 12) == 0
    assert records.requeue_outdated(db, {"6.1": "k=2"}, 12) == 1
    assert records.next_follow_up(db)["bug_id"] == bug_id


def test_packing_the_same_findings_twice_gives_the_same_upload(tmp_path):
    record_finding(tmp_path / "night")
    first = pack(tmp_path / "night")
    time.sleep(1.1)
    assert pack(tmp_path / "night") == first


def test_charts_break_where_a_kernel_was_not_fuzzed():
    from fuzz.serve.charts import line_chart
    svg = line_chart("programs/s", {"zoo": [(0, 1.0), (60, 2.0), (1000, 3.0)], "stock": []})
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 1 and "zoo" in svg
    assert "no data yet" in line_chart("empty", {})
