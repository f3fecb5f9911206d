"""The service under the load of many reporting workers, on loopback.

    procfuzz bench serve_load [--workers 50] [--seconds 120] [--stats-every 1] [--finding-every 10]
                              [--save]

Starts a `procfuzz serve` service in a child process (its HTTP server, database and importer;
no campaigns of its own), then simulates ``--workers`` campaigns reporting to it as `procfuzz
run --report-to` does: each posts its counters every ``--stats-every`` seconds and a finding of
its own every ``--finding-every`` seconds, one an upload, and sends its previous finding again
now and then (a worker catching up after an outage).  Meanwhile one client polls the dashboard's
API (`/api/status`, `/api/workers`, `/api/bugs`) without pause.  It stops by itself after
``--seconds`` and prints the findings the service lost or counted twice (both must be 0) and
the latency percentiles of the API polls and of the workers' posts.  `--save` writes
bench/results/serve-load-DATE.json (then `python bench/render.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fuzz.compare.oracle import compare  # noqa: E402
from fuzz.execute.kernels import model_for  # noqa: E402
from fuzz.record import store  # noqa: E402
from fuzz.record.finding import Finding  # noqa: E402
from fuzz.record.summary import Stats  # noqa: E402
from fuzz.serve.client import ServiceError, post  # noqa: E402
from fuzz.serve.upload import pack_findings  # noqa: E402
from reference.program import parse_text  # noqa: E402
from targets.kernels import load_profile  # noqa: E402
from targets.model_target import ModelTarget  # noqa: E402

POLLED = ("/api/status", "/api/workers", "/api/bugs")
KERNEL = "load 6.1-cloud"


def serve_only(port: int, state: Path, token_file: Path) -> None:
    """The child: the service's manager (not started: no campaigns, imports on upload) and HTTP."""
    from fuzz.serve.config import ServeConfig
    from fuzz.serve.http import Service
    from fuzz.serve.manager import Manager
    manager = Manager(ServeConfig(follow_up=False), state, model_for=model_for)
    server = Service(("127.0.0.1", port), manager, token_file.read_text().strip())
    server.serve_forever()


def stale_findings(out: Path, count: int) -> list[Path]:
    """``count`` distinct findings (a stale lookup after reap, each program a little longer)."""
    model = ModelTarget(load_profile())
    directories = []
    for n in range(count):
        # n in two counts of harmless lookups: every program distinct, all within the op limit
        program = parse_text("m1 = mount_proc p1\n" + "lookup p1 {m1}/self\n" * (n % 100) +
                             "lookup p1 {m1}/thread-self\n" * (n // 100) +
                             "p2 = spawn p1\nexit p2\nreap p1 p2\nlookup p1 {m1}/{p2}\n")
        expected = model.run(program)
        actual = dataclasses.replace(expected, results=expected.results[:-1] + ("ok:dir",))
        finding = Finding(program, expected, actual, compare(program, expected, actual), KERNEL)
        directories.append(store.record(out, finding)[0])
    return directories


@dataclasses.dataclass
class Tally:
    latencies: dict = dataclasses.field(default_factory=lambda: {"poll": [], "stats": [], "finding": []})
    errors: list = dataclasses.field(default_factory=list)
    sent: set = dataclasses.field(default_factory=set)        # finding names the service took
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def timed(self, kind: str, call):
        started = time.monotonic()
        try:
            result = call()
        except (ServiceError, OSError) as err:
            with self.lock:
                self.errors.append(f"{kind}: {err}")
            return None
        with self.lock:
            self.latencies[kind].append(time.monotonic() - started)
        return result


def worker(number: int, url: str, token: str, findings: list[Path], top: Path, args, tally: Tally,
           deadline: float) -> None:
    name, stats, sent = f"load-{number:02d}", Stats(), []
    next_finding = time.monotonic() + args.finding_every * (number / args.workers)   # spread over the period
    while time.monotonic() < deadline:
        stats.programs += int(10 * args.stats_every)
        body = json.dumps({"kernel": KERNEL, "stats": stats.to_json()}).encode()
        tally.timed("stats", lambda: post(url, f"/api/workers/{name}/stats", body, "application/json", token, 30))
        if time.monotonic() >= next_finding and findings:
            next_finding += args.finding_every
            batch = [findings.pop()] + ([sent[-1]] if sent and len(sent) % 3 == 0 else [])   # now and then a repeat
            for directory in batch:
                if tally.timed("finding", lambda: post(url, "/api/import", pack_findings([directory], top),
                                                       "application/gzip", token, 60)) is not None:
                    with tally.lock:
                        tally.sent.add(directory.name)
                    sent.append(directory)
        time.sleep(args.stats_every)


def poller(url: str, tally: Tally, deadline: float) -> None:
    while time.monotonic() < deadline:
        for path in POLLED:
            tally.timed("poll", lambda: urllib.request.urlopen(url + path, timeout=30).read())


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else [values[0]] * 99
    return {"count": len(values), "p50 ms": round(cuts[49] * 1e3, 1), "p90 ms": round(cuts[89] * 1e3, 1),
            "p99 ms": round(cuts[98] * 1e3, 1), "max ms": round(max(values) * 1e3, 1)}


def measure(args) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="procfuzz-serve-load-"))
    token = secrets.token_hex(16)
    (scratch / "token").write_text(token)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    per_worker = int(args.seconds / args.finding_every) + 1
    top = scratch / "workers"
    findings = stale_findings(top, args.workers * per_worker)
    child = subprocess.Popen([sys.executable, __file__, "--serve-only", str(port), str(scratch / "state"),
                              str(scratch / "token")], env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):                        # until it listens
            try:
                urllib.request.urlopen(url + "/api/status", timeout=5).read()
                break
            except OSError:
                time.sleep(0.1)
        tally, deadline = Tally(), time.monotonic() + args.seconds
        threads = [threading.Thread(target=worker, args=(n, url, token, findings[n::args.workers], top, args, tally,
                                                          deadline)) for n in range(args.workers)]
        threads.append(threading.Thread(target=poller, args=(url, tally, deadline)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        status = json.loads(urllib.request.urlopen(url + "/api/status", timeout=60).read())
        workers = json.loads(urllib.request.urlopen(url + "/api/workers", timeout=60).read())
    finally:
        child.terminate()
        child.wait(30)
    recorded = int(status["findings"])
    return {"workers reporting": len(workers), "findings sent (distinct)": len(tally.sent),
            "findings recorded": recorded, "lost": max(len(tally.sent) - recorded, 0),
            "duplicated": max(recorded - len(tally.sent), 0), "request errors": len(tally.errors),
            "first errors": tally.errors[:3],
            **{f"{kind} latency": percentiles(values) for kind, values in tally.latencies.items()}}


def main() -> int:
    if sys.argv[1:2] == ["--serve-only"]:
        serve_only(int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--stats-every", type=float, default=1.0)
    parser.add_argument("--finding-every", type=float, default=10.0)
    parser.add_argument("--save", action="store_true", help="write the result to bench/results/")
    args = parser.parse_args()
    figures = measure(args)
    for key, value in figures.items():
        print(f"{key:26} {value}")
    if args.save:
        today = datetime.date.today().isoformat()
        rows = [[key, json.dumps(value) if isinstance(value, (dict, list)) else value] for key, value in figures.items()]
        doc = {"title": "The service under load: reporting workers and a polling dashboard",
               "command": f"procfuzz bench serve_load --workers {args.workers} --seconds {args.seconds:.0f} "
                          f"--stats-every {args.stats_every:g} --finding-every {args.finding_every:g} --save",
               "date": today, "kernel": "none (simulated workers)",
               "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; the service "
                          "(SQLite) in one process, the workers and the poller in another, on loopback",
               "columns": ["figure", "value"], "rows": rows,
               "notes": ["lost and duplicated must be 0: every finding the service acknowledged is in its "
                         "database once, although a third of the workers' findings were sent twice.",
                         "Latency goal: p99 of the dashboard's API polls under 100 ms."]}
        path = ROOT / "bench" / "results" / f"serve-load-{today}.json"
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"saved {path}")
    return 0 if figures["lost"] == 0 and figures["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
