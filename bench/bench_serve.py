"""The service end to end: `procfuzz serve` for a while on a canary and a stock kernel, with no
hand on the keyboard.

    procfuzz bench serve [--minutes 30] [--guests 2] [--campaign-budget 30m] [--until-done]
                         [--state DIR] [--json FILE]

One worker on 6.1-cloud with the stale_pid zoo bug, one on stock 6.1-cloud; follow-ups
reproduce on the fuzzed kernels and on 6.12-cloud.  Passes when the zoo bug was found,
minimised, reproduced on 6.1+zoo and 6.12+zoo and not on stock 6.1, and exported to C, and the
stock kernel shows no new bug.  The result (timeline of counters, the bug's follow-up, verdicts)
goes to bench/results/serve-6.1.176-DATE.json.  Exit 0 passed, 1 not.  With --guests 1 the two kernels take
turns (give --campaign-budget a few minutes then).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.campaign.run import parse_duration  # noqa: E402
from fuzz.serve import records  # noqa: E402
from fuzz.serve.config import KernelConfig, ServeConfig  # noqa: E402
from fuzz.serve.http import Service  # noqa: E402
from fuzz.serve.manager import Manager  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / f"serve-6.1.176-{time.strftime('%Y-%m-%d', time.gmtime())}.json"
ZOO = "stale_pid"


def verdicts(db) -> dict:
    """What the run shows: the zoo bug's follow-up and verdicts, and the stock kernel's bugs."""
    zoo_bugs = [records.bug(db, row["id"]) for row in records.bugs(db, cls="stale")
                if any(f"+zoo:{ZOO}" in kernel for kernel in row["kernels"])]
    followed = [bug for bug in zoo_bugs if bug["follow_up"] and bug["follow_up"]["state"] == "done"]
    best = followed[0] if followed else (zoo_bugs[0] if zoo_bugs else None)
    repro = {r["pin"]: (r["diverged"], r["runs"]) for r in best["reproducibility"]} if best else {}
    stock_new = [row["bug_key"] for row in records.bugs(db, status="new")
                 if not any("+zoo:" in kernel for kernel in row["kernels"])]
    checks = {
        "found": best is not None,
        "minimised": bool(best and "minimised" in (best["follow_up"] or {}).get("detail", "")
                          and "not minimised" not in best["follow_up"]["detail"]),
        "reproduced_on_6.1_zoo": repro.get(f"6.1-cloud +zoo:{ZOO}", (0, 0))[0] > 0,
        "reproduced_on_6.12_zoo": repro.get(f"6.12-cloud +zoo:{ZOO}", (0, 0))[0] > 0,
        "not_on_stock_6.1": repro.get("6.1-cloud", (1, 0))[0] == 0 and repro.get("6.1-cloud", (1, 0))[1] > 0,
        "exported_c": bool(best and "C reproducer" in (best["follow_up"] or {}).get("detail", "")),
        "stock_shows_no_new_bug": not stock_new,
    }
    return {"checks": checks, "passed": all(checks.values()),
            "zoo_bug": {k: best[k] for k in ("bug_key", "status", "first_seen", "count", "follow_up",
                                             "reproducibility")} if best else None,
            "zoo_bugs": len(zoo_bugs), "stock_new_bugs": stock_new}


def result_doc(command: str, seconds: int, result: dict, timeline: list) -> dict:
    """The run as a bench/results file (bench/render.py): the checks as figures, the zoo bug's
    follow-up and the counters' timeline kept beside them."""
    zoo = result["zoo_bug"] or {}
    figures = {"seconds": seconds, **result["checks"], "passed": result["passed"],
               "zoo bugs (keys)": result["zoo_bugs"], "stock kernel's new bugs": ", ".join(result["stock_new_bugs"]) or "none"}
    return {"title": "Service: a canary and a stock kernel with no hand on the keyboard",
            "command": command, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
            "kernel": f"6.1-cloud with and without zoo:{ZOO}; 6.12-cloud +zoo:{ZOO} in follow-ups",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, TCG", "figures": figures,
            "notes": [f"zoo bug follow-up: {(zoo.get('follow_up') or {}).get('detail', 'none')}"],
            "zoo_bug": zoo, "timeline": timeline}


def main() -> int:
    parser = argparse.ArgumentParser(prog="procfuzz bench serve", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--guests", type=int, default=2)
    parser.add_argument("--campaign-budget", default="30m")
    parser.add_argument("--until-done", action="store_true", help="stop as soon as every check passes")
    parser.add_argument("--state", default=None, help="state directory (default: a new temporary one)")
    parser.add_argument("--json", default=str(RESULTS))
    args = parser.parse_args()
    config = ServeConfig(kernels=(KernelConfig("6.1-zoo", "6.1-cloud", ZOO), KernelConfig("6.1", "6.1-cloud")),
                         guests=args.guests, budget=parse_duration(args.campaign_budget), runs=5,
                         follow_up_pins=("6.12-cloud",))
    state = Path(args.state or tempfile.mkdtemp(prefix="procfuzz-bench-serve-"))
    manager = Manager(config, state).start()
    server = Service(("127.0.0.1", 0), manager, None)
    server.serve_in_thread()
    print(f"dashboard: http://127.0.0.1:{server.server_address[1]}/  state: {state}", flush=True)
    started, timeline = time.time(), []
    try:
        while time.time() - started < args.minutes * 60:
            time.sleep(30)
            status = manager.status()
            timeline.append({"seconds": round(time.time() - started), "bugs": status["bugs"],
                             "follow_ups": status["follow_ups"],
                             "kernels": {k["name"]: {f: k.get(f) for f in ("programs", "findings", "state")}
                                         for k in status["kernels"]}})
            print(json.dumps(timeline[-1]), flush=True)
            if args.until_done and verdicts(manager.db)["passed"]:
                break
        result = verdicts(manager.db)
    finally:
        server.shutdown()
        manager.stop()
    doc = result_doc(" ".join(["procfuzz bench serve", *sys.argv[1:]]), round(time.time() - started), result,
                     timeline)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(json.dumps(doc["figures"], indent=1))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
