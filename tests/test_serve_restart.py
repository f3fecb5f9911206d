"""kill -9 of a `procfuzz serve` process, then the same command again on the same state: every
bug, finding, artifact and stat point recorded before is there, the killed manager's workers
died with it, and the campaigns go on."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from test_serve_api import get, wait_for
from test_serve_fakes import _free_port

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
guests = 2
[campaign]
budget = "1h"
[follow_up]
runs = 2
retries = 1
[[kernel]]
name = "zoo"
pin = "6.1-cloud"
zoo = "stale_pid"
[[kernel]]
name = "stock"
pin = "6.1-cloud"
"""
# The command line's main with fake kernels: what `procfuzz serve` runs, without QEMU.
SERVE = ("import sys; from fuzz.cli import main; from test_serve_fakes import fake_kernel; "
         "sys.exit(main(sys.argv[1:], open_target=fake_kernel))")


def start(tmp_path: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    log = open(tmp_path / "serve.log", "a")
    return subprocess.Popen([sys.executable, "-c", SERVE, "serve", "--config", str(tmp_path / "procfuzz.toml"),
                             "--state", str(tmp_path / "state"), "--listen", f"127.0.0.1:{port}"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = {int(c) for c in (task / "children").read_text().split()}
            except OSError:
                continue
            todo += list(children - found)
            found |= children
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def snapshot(base: str) -> dict:
    bugs = {bug["bug_key"]: get(f"{base}/api/bugs/{bug['id']}") for bug in get(f"{base}/api/bugs")}
    return {"bugs": set(bugs), "findings": {f["directory"] for bug in bugs.values() for f in bug["findings"]},
            "stats": {(p["campaign_id"], p["minute"]) for p in get(f"{base}/api/stats?since=0")},
            "reproducibility": {(key, r["kernel"], r["diverged"], r["runs"]) for key, bug in bugs.items()
                                for r in bug["reproducibility"]}}


def test_kill_9_then_restart_keeps_everything(tmp_path):
    (tmp_path / "procfuzz.toml").write_text(CONFIG)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    first = start(tmp_path, port)
    try:
        wait_for(lambda: _ready(base) and get(f"{base}/api/status")["follow_ups"]["done"] >= 1,
                 what="a followed-up bug before the kill")
        workers = descendants(first.pid)
        before = snapshot(base)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        wait_for(lambda: not any(alive(pid) for pid in workers), 30, "the workers to die with the manager")
    finally:
        first.kill()
    assert before["bugs"] and before["findings"] and before["stats"] and before["reproducibility"]
    second = start(tmp_path, port)
    try:
        wait_for(lambda: _ready(base), what="the restarted service")
        after = snapshot(base)
        for part in ("bugs", "findings", "stats", "reproducibility"):
            assert before[part] <= after[part], part
        campaigns = get(f"{base}/api/campaigns?limit=100")
        assert all(c["ended"] for c in campaigns if c["id"] <= max(cid for cid, _ in before["stats"]))
        wait_for(lambda: all(k.get("programs", 0) > 0 for k in get(f"{base}/api/kernels")), what="campaigns resumed")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    assert "stopping" in (tmp_path / "serve.log").read_text()


def _ready(base: str) -> bool:
    try:
        get(f"{base}/api/status")
        return True
    except OSError:
        return False
