"""`procfuzz run --report-to`: a campaign reports its counters and findings to a service as it
goes; a service that is away takes everything when it is back, and a finding once however
often it is sent; a refused token stops the reporting, not the campaign; a malformed report
changes nothing.  The service runs in-process on loopback, the campaign on fake kernels."""

import json
import os
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fuzz.campaign.run import RunOptions, new_stop_event, run
from fuzz.campaign.startup import StartCorpus
from fuzz.campaign.worker import WorkerConfig, run_worker
from fuzz.execute.kernels import KernelSpec, model_for
from fuzz.record import store
from fuzz.record.programs import load_directory, save_program
from fuzz.serve.report_to import LEDGER, Reporter, kernel_set
from fuzz.serve.client import push
from fuzz.serve.config import ServeConfig
from fuzz.serve.http import Service
from fuzz.serve.manager import Manager
from reference.program import parse_text
from targets.model_target import ModelTarget
from test_model import PROFILE
from test_serve_fakes import STALE, _free_port, fake_kernel

STALE_TEXT = STALE.to_text()

TOKEN = "t0ken-for-the-report-tests-0123"
ROOT = Path(__file__).resolve().parent.parent


class Running:
    """A service (no campaigns of its own) listening on ``port``, stopped and started at will
    with the same state directory."""

    def __init__(self, state: Path, port: int, token: str | None = TOKEN):
        self.state, self.port, self.token = state, port, token
        self.manager = self.server = None

    def start(self) -> "Running":
        self.manager = Manager(ServeConfig(follow_up=False), self.state, fake_kernel, model_for)
        self.server = Service(("127.0.0.1", self.port), self.manager, self.token)
        self.server.serve_in_thread()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.manager.stop()

    def get(self, path: str):
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as answer:
            return json.loads(answer.read())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def service(tmp_path):
    running = Running(tmp_path / "state", _free_port()).start()
    yield running
    running.stop()


def campaign(out: Path, reporter: Reporter | None, programs: int = 40):
    """A seeded campaign on the zoo's stale_pid (faked: a planted stale bug), one worker."""
    options = RunOptions(KernelSpec("6.1-cloud", "stale_pid"), 600, 1, out, seed=5, max_programs=programs,
                         distill=False)
    on_update = reporter.update if reporter else (lambda stats: None)
    return run(options, on_update, new_stop_event(), fake_kernel)


def counted(service) -> int:
    """Findings the service's bugs count."""
    return sum(bug["count"] for bug in service.get("/api/bugs"))


def test_counters_and_findings_reach_the_service_once(service, tmp_path):
    out = tmp_path / "out"
    with Reporter(service.url, out, "worker-a", "6.1+zoo", TOKEN, every=0.2) as reporter:
        result = campaign(out, reporter)
    findings = store.list_findings(out)
    assert findings and reporter.pending() == [] and reporter.sent == len(findings)
    assert sorted((out / LEDGER).read_text().split()) == sorted(d.name for d in findings)
    [worker] = service.get("/api/workers")
    assert (worker["name"], worker["kernel"], worker["programs"]) == ("worker-a", "6.1+zoo", result.stats.programs)
    assert not worker["stale"]
    assert counted(service) == len(findings)
    with urllib.request.urlopen(service.url + "/") as page:       # the dashboard lists it too
        assert re.search(r"<tr><td>worker-a</td><td>6\.1\+zoo</td><td>%d</td>" % result.stats.programs,
                         page.read().decode())
    # The whole directory pushed again after the night: every finding is a repeat, none counts twice.
    answer = push(service.url, out, TOKEN)
    assert (answer["findings_added"], answer["repeated"]) == (0, len(findings))
    assert counted(service) == len(findings)


def test_a_service_that_was_away_gets_everything_when_it_is_back(tmp_path):
    away = Running(tmp_path / "state", _free_port())
    out = tmp_path / "out"
    reporter = Reporter(away.url, out, "worker-b", "6.1+zoo", TOKEN, every=0.2)
    with reporter:
        campaign(out, reporter)
    findings = store.list_findings(out)
    assert findings and len(reporter.pending()) == len(findings) and reporter.error and not reporter.refused
    away.start()
    try:
        assert reporter.flush() and reporter.pending() == []
        assert counted(away) == len(findings)
        assert [w["name"] for w in away.get("/api/workers")] == ["worker-b"]
        # A restarted worker on the same OUT sends nothing again.
        again = Reporter(away.url, out, "worker-b", "6.1+zoo", TOKEN)
        assert again.pending() == [] and again.flush() and again.sent == 0
    finally:
        away.stop()


def test_a_refused_token_stops_the_reporting_not_the_campaign(service, tmp_path):
    out = tmp_path / "out"
    with Reporter(service.url, out, "worker-c", "6.1+zoo", "not-the-token-at-all", every=0.2) as reporter:
        result = campaign(out, reporter)
    assert result.stats.programs == 40 and store.list_findings(out)
    assert reporter.refused and "401" in reporter.error and reporter.sent == 0
    assert service.get("/api/workers") == [] and counted(service) == 0
    assert "refused" in reporter.describe() and "procfuzz push" in reporter.describe()


@pytest.mark.parametrize("name, body", [
    ("worker-d", b"not json"),
    ("worker-d", b'{"kernel": "k"}'),
    ("worker-d", b'{"kernel": "k", "stats": {"programs": "many"}}'),
    ("worker-d", json.dumps({"kernel": "k" * 300, "stats": {}}).encode()),
    ("bad%20name", b'{"kernel": "k", "stats": {}}'),
])
def test_a_malformed_report_is_a_4xx_and_changes_nothing(service, name, body):
    request = urllib.request.Request(f"{service.url}/api/workers/{name}/stats", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert 400 <= refused.value.code < 500
    assert service.get("/api/workers") == []


@pytest.mark.parametrize("token, exit_code", [(TOKEN, 1), ("a-wrong-token-0123456789", 2)])
def test_the_nightly_triage_pushes_into_the_service(service, tmp_path, token, exit_code):
    campaign(tmp_path / "in" / "6.1-cloud" / "shard-0-of-1", None)
    found = len(store.list_findings(tmp_path / "in" / "6.1-cloud" / "shard-0-of-1"))
    env = {**os.environ, "PROCFUZZ_URL": service.url, "PROCFUZZ_TOKEN": token}
    triage = subprocess.run(["bash", str(ROOT / "ci" / "nightly-triage.sh"), str(tmp_path / "in"), str(tmp_path / "report")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert triage.returncode == exit_code, triage.stderr[-2000:]
    assert (tmp_path / "report" / "report.md").is_file()            # the reports, pushed or not
    assert counted(service) == (found if exit_code == 1 else 0)


# ---- the corpus hub ----------------------------------------------------------------------------

SHARED = parse_text("m1 = mount_proc p1\nlookup p1 {m1}/uptime\nreaddir p1 {m1}/self/task\n")


def post_json(service, path: str, doc) -> int:
    request = urllib.request.Request(f"{service.url}{path}", data=json.dumps(doc).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


def test_the_hub_keeps_each_program_once_in_order_and_refuses_bad_posts(service):
    assert post_json(service, "/api/corpus/k1", {"programs": [SHARED.to_text(), STALE_TEXT]}) == 200
    assert post_json(service, "/api/corpus/k1", {"programs": [STALE_TEXT]}) == 200          # a repeat
    page = service.get("/api/corpus/k1?since=0")
    assert [parse_text(text).id for text in page["programs"]] == [SHARED.id, parse_text(STALE_TEXT).id]
    assert page["next"] == 2 and service.get("/api/corpus/k1?since=2") == {"programs": [], "next": 2}
    for bad in ({"programs": ["m1 = no_such_op p1\n"]}, {"programs": "text"}, {"programs": ["x"] * 101},
                {"program": []}):
        assert post_json(service, "/api/corpus/k1", bad) == 400
    assert post_json(service, "/api/corpus/bad%20set", {"programs": [STALE_TEXT]}) == 400
    assert service.get("/api/corpus/k1?since=0")["next"] == 2 and service.get("/api/corpus/k2")["next"] == 0


def test_campaigns_of_one_kernel_share_their_corpus_through_the_hub(service, tmp_path):
    a = Reporter(service.url, tmp_path / "a", "a", "6.1 label", TOKEN, corpus=tmp_path / "a" / "corpus")
    b = Reporter(service.url, tmp_path / "b", "b", "6.1 label", TOKEN, corpus=tmp_path / "b" / "corpus")
    other = Reporter(service.url, tmp_path / "c", "c", "6.12 label", TOKEN, corpus=tmp_path / "c" / "corpus")
    save_program(tmp_path / "a" / "corpus", SHARED)
    (tmp_path / "b" / "corpus").mkdir(parents=True)
    (tmp_path / "c" / "corpus").mkdir(parents=True)
    assert a.flush() and b.flush() and other.flush() and a.flush()
    assert [p.id for _, p in load_directory(tmp_path / "b" / "corpus")[0]] == [SHARED.id]
    assert load_directory(tmp_path / "c" / "corpus")[0] == []                     # another kernel's set
    assert service.get(f"/api/corpus/{kernel_set('6.1 label')}")["next"] == 1     # not posted back by b


class Recording(ModelTarget):
    """The model as a kernel that remembers what it ran; at its third program another worker's
    program appears in the working corpus."""

    def __init__(self, corpus: Path):
        super().__init__(PROFILE)
        self.corpus, self.ran = corpus, []

    def run(self, program):
        self.ran.append(program.id)
        if len(self.ran) == 3:
            save_program(self.corpus, SHARED)
        return super().run(program)


@pytest.mark.parametrize("exchange_every, runs", [(0.001, 1), (0.0, 0)])
def test_a_worker_runs_the_programs_other_workers_add_to_the_corpus(tmp_path, exchange_every, runs):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    target = Recording(corpus)
    config = WorkerConfig(0, 1, PROFILE, "k", tmp_path / "out", corpus, float("inf"), max_programs=30,
                          state_check=0, exchange_every=exchange_every)
    stats = run_worker(config, target, lambda stats: None, lambda: False, start=StartCorpus((), ()))
    assert target.ran.count(SHARED.id) == runs          # without the exchange: never
    assert stats.from_others == runs and stats.to_json()["programs_from_others"] == runs
