"""The service through its real HTTP server on loopback: one manager with fake kernels (a
planted stale bug on the zoo kernel, a correct stock one) shared by the tests of this module;
counters grow, the bug is found, followed up, shown and downloadable; campaigns stop and start;
uploads import or are refused; writes need the token when one is set."""

import dataclasses
import json
import time
import urllib.error
import urllib.request

import pytest

from fuzz.execute.kernels import model_for
from fuzz.serve import records
from fuzz.serve.client import push
from fuzz.serve.config import KernelConfig, ServeConfig
from fuzz.serve.http import Service
from fuzz.serve.manager import Manager, ManagerError
from fuzz.errors import ToolError
from test_serve_fakes import fake_kernel, postgres_url, record_finding  # noqa: F401 - a fixture

CONFIG = ServeConfig(kernels=(KernelConfig("zoo", "6.1-cloud", "stale_pid"), KernelConfig("stock", "6.1-cloud")),
                     guests=2, budget=3600, runs=2, retries=1)
TOKEN = "t0ken-for-the-tests-0123456789"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    manager = Manager(CONFIG, state, fake_kernel, model_for, stat_seconds=2, scan_seconds=0.5).start()
    server = Service(("127.0.0.1", 0), manager, None)
    server.serve_in_thread()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", manager
    finally:
        server.shutdown()
        server.server_close()
        manager.stop()


def get(url: str, raw: bool = False):
    with urllib.request.urlopen(url, timeout=30) as answer:
        body = answer.read()
        return (body, answer.headers) if raw else json.loads(body)


def post(url: str, data: bytes = b"", token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, method="POST")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_for(check, seconds: float = 90.0, what: str = ""):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (value := check()):
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def followed_up_stale_bug(base: str) -> dict:
    """The planted bug, once its follow-up is done."""
    def done():
        for row in get(f"{base}/api/bugs?cls=stale"):
            bug = get(f"{base}/api/bugs/{row['id']}")
            if bug["follow_up"] and bug["follow_up"]["state"] == "done" and bug["reproducibility"]:
                return bug
        return None
    return wait_for(done, what="a followed-up stale bug")


def test_counters_grow_and_stat_points_are_recorded(service):
    base, _ = service
    status = get(f"{base}/api/status")
    assert [k["name"] for k in status["kernels"]] == ["stock", "zoo"]
    assert status["database"] == "sqlite" and status["guests"]["capacity"] == 2
    first = wait_for(lambda: [k for k in get(f"{base}/api/kernels") if k.get("programs", 0) > 0], what="programs")
    later = wait_for(lambda: [k for k in get(f"{base}/api/kernels")
                              if k["name"] == first[0]["name"] and k.get("programs", 0) > first[0]["programs"]],
                     what="more programs")
    assert later[0]["features"] > 0
    # The working corpus holds what a campaign found beyond the seeds: empty until it finds some
    # (and again after a campaign that yielded its guests early is distilled).
    wait_for(lambda: [k for k in get(f"{base}/api/kernels") if k.get("corpus", 0) > 0], what="a corpus program")
    points = wait_for(lambda: get(f"{base}/api/stats"), what="stat points")
    assert {"programs_per_second", "features", "corpus", "restarts", "findings", "kernel"} <= set(points[0])
    assert get(f"{base}/api/campaigns")[0]["kernel"] in ("stock", "zoo")


def test_the_planted_bug_is_found_minimised_reproduced_and_exported(service):
    base, _ = service
    bug = followed_up_stale_bug(base)
    assert bug["status"] == "new" and bug["kernels"] and "zoo:stale_pid" in bug["kernels"][0]
    verdicts = {row["kernel"]: (row["diverged"], row["runs"]) for row in bug["reproducibility"]}
    assert verdicts == {"fake 6.1-cloud +zoo:stale_pid": (2, 2), "fake 6.1-cloud": (0, 2)}
    assert "minimised" in bug["follow_up"]["detail"]
    source, headers = get(f"{base}/api/bugs/{bug['id']}/reproducer.c", raw=True)
    assert b"int main" in source and "attachment" in headers["Content-Disposition"]
    representative = next(f for f in bug["findings"] if f["directory"] == bug["artifacts"])
    finding = get(f"{base}/api/findings/{representative['id']}")
    assert finding["divergence"]["class"] == "stale" and "reproducer.c" in finding["artifacts"]
    program, _ = get(base + finding["artifacts"]["program"], raw=True)
    assert program.decode() == finding["program"]
    assert get(f"{base}/api/bugs?cls=stale&status=new") and get(f"{base}/api/bugs?kernel=nonesuch") == []


def test_the_stock_kernel_shows_no_bug(service):
    base, _ = service
    followed_up_stale_bug(base)
    assert not any(k.startswith("fake") or "zoo" not in k for bug in get(f"{base}/api/bugs") for k in bug["kernels"])


def test_pages_render_the_dashboard_and_the_bug_with_its_divergent_op(service):
    base, _ = service
    bug = followed_up_stale_bug(base)
    page, headers = get(base + "/", raw=True)
    assert b"<svg" in page and b"/static/live.js" in page and "script-src 'self'" in headers["Content-Security-Policy"]
    page, _ = get(f"{base}/bugs/{bug['id']}", raw=True)
    assert b'class="divergent"' in page and b"reproducer.c" in page and b"Minimised program" in page
    listing, _ = get(f"{base}/bugs?status=new", raw=True)
    assert f'/bugs/{bug["id"]}"'.encode() in listing
    script, headers = get(f"{base}/static/live.js", raw=True)
    assert b"/api/status" in script and headers["Content-Type"].startswith("text/javascript")


def test_unknown_things_are_404_and_bad_queries_400(service):
    base, _ = service
    for path in ("/nonesuch", "/api/bugs/999999", "/api/findings/999999", "/bugs/999999"):
        with pytest.raises(urllib.error.HTTPError) as err:
            get(base + path)
        assert err.value.code == 404, path
    with pytest.raises(urllib.error.HTTPError) as err:
        get(base + "/api/bugs?status=maybe")
    assert err.value.code == 400
    assert post(f"{base}/api/campaigns/nonesuch/stop")[0] == 404


def test_a_campaign_stops_and_starts_again(service):
    base, _ = service
    assert post(f"{base}/api/campaigns/stock/stop") == (200, {"kernel": "stock", "enabled": False})
    wait_for(lambda: not next(k for k in get(f"{base}/api/kernels") if k["name"] == "stock")["running"],
             what="the stock campaign to stop")
    assert post(f"{base}/api/campaigns/stock/start")[0] == 200
    wait_for(lambda: next(k for k in get(f"{base}/api/kernels") if k["name"] == "stock")["running"],
             what="the stock campaign to start again")


def test_push_imports_a_night_of_findings_once(service, tmp_path):
    base, _ = service
    night = tmp_path / "night"
    record_finding(night / "shard-0", kernel="someone's 6.12 +zoo:stale_pid")
    answer = push(base, night)
    assert answer["new_upload"] and answer["findings_added"] == 1
    again = push(base, night)
    assert again["upload"] == answer["upload"] and again["findings_added"] == 0
    assert any("someone's 6.12 +zoo:stale_pid" in bug["kernels"] for bug in get(f"{base}/api/bugs"))
    with pytest.raises(ToolError, match="no finding directories"):
        push(base, tmp_path / "empty")


def test_writes_need_the_token_when_one_is_set(service):
    _, manager = service
    server = Service(("127.0.0.1", 0), manager, TOKEN)
    server.serve_in_thread()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert post(f"{base}/api/campaigns/stock/start")[0] == 401
        assert post(f"{base}/api/campaigns/stock/start", token="wrong")[0] == 401
        assert post(f"{base}/api/campaigns/stock/start", token=TOKEN)[0] == 200
        assert get(f"{base}/api/status")["kernels"]           # reads stay open
    finally:
        server.shutdown()
        server.server_close()


def test_beyond_loopback_a_token_is_required(service):
    _, manager = service
    with pytest.raises(ValueError, match="needs a token"):
        Service(("0.0.0.0", 0), manager, None)


def test_a_second_manager_on_the_same_state_is_refused(service):
    _, manager = service
    with pytest.raises(ManagerError, match="in use by another procfuzz serve"):
        Manager(CONFIG, manager.state, fake_kernel, model_for)


def test_a_page_of_another_site_cannot_post(service):
    base, _ = service
    request = urllib.request.Request(f"{base}/api/campaigns/stock/stop", data=b"", method="POST",
                                     headers={"Origin": "http://evil.example"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 403
    assert next(k for k in get(f"{base}/api/kernels") if k["name"] == "stock")["enabled"]


def test_the_manager_keeps_its_bugs_in_postgresql(tmp_path, postgres_url):
    config = dataclasses.replace(CONFIG, kernels=CONFIG.kernels[:1], guests=1, database=postgres_url)
    manager = Manager(config, tmp_path / "state", fake_kernel, model_for, stat_seconds=2, scan_seconds=0.5).start()
    server = Service(("127.0.0.1", 0), manager, None)
    server.serve_in_thread()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert get(f"{base}/api/status")["database"] == "postgresql"
        bug = followed_up_stale_bug(base)
        assert bug["reproducibility"] and get(f"{base}/api/stats")
        page, _ = get(f"{base}/bugs/{bug['id']}", raw=True)
        assert b'class="divergent"' in page
    finally:
        server.shutdown()
        server.server_close()
        manager.stop()


def test_bad_uploads_through_http_are_4xx_and_change_nothing(service):
    import io
    import tarfile
    from fuzz.serve.upload import Limits
    _, manager = service
    server = Service(("127.0.0.1", 0), manager, None, Limits(upload_bytes=4096))
    server.serve_in_thread()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        imports = manager.state / "imports"

        def uploaded():                    # the campaigns go on meanwhile: count what uploads brought
            rows = {d for d in records.known_directories(manager.db) if d.startswith(str(imports))}
            return rows, sorted(p.name for p in imports.glob("*"))
        before = uploaded()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            info = tarfile.TarInfo("../../escape")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        for body, status in ((buffer.getvalue(), 400), (b"\0" * 5000, 413), (b"not a tarball", 400)):
            code, answer = post(f"{base}/api/import", body)
            assert (code, bool(answer["error"])) == (status, True)
        assert uploaded() == before and not (manager.state.parent / "escape").exists()
    finally:
        server.shutdown()
        server.server_close()
