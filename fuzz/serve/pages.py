"""The service's HTML pages, rendered on the server: the dashboard (live counters, charts), the
bug list and a bug's page (traces side by side, the divergent op marked, reproducibility per
kernel, the minimised program, the C reproducer).  Everything from a finding is untrusted and
escaped; the pages load only this server's own script and style (see CSP in http.py)."""

from __future__ import annotations

import time
from html import escape
from urllib.parse import urlencode

from reference.trace import result_matches

from fuzz.record.finding import Finding
from fuzz.report.reports import clean

from .charts import line_chart, series_of
from .records import BUG_STATUSES

STYLE = """
body { font-family: sans-serif; margin: 0 1.5em 2em; color: #222; }
nav { padding: .6em 0; border-bottom: 1px solid #ccc; margin-bottom: 1em; }
nav a { margin-right: 1.2em; }
table { border-collapse: collapse; margin: .5em 0 1.2em; }
td, th { border: 1px solid #ddd; padding: .2em .5em; text-align: left; vertical-align: top; font-size: 14px; }
th { background: #f4f4f4; }
.counters { display: flex; flex-wrap: wrap; gap: .8em; margin-bottom: 1em; }
.counter { border: 1px solid #ccc; border-radius: 6px; padding: .4em .8em; min-width: 7em; }
.counter b { display: block; font-size: 1.5em; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
pre, code { font-family: monospace; font-size: 13px; }
pre { background: #f7f7f7; padding: .6em; overflow-x: auto; max-height: 30em; }
#traces { table-layout: fixed; width: 100%; }
#traces td { overflow-wrap: anywhere; } #traces th:nth-child(1) { width: 2.5em; } #traces th:nth-child(5) { width: 8em; }
tr.divergent td { background: #ffd7d7; font-weight: bold; }
tr.differs td { background: #fff4cc; }
tr.stale td { color: #888; }
.status-new { color: #b00; font-weight: bold; } .status-fixed { color: #070; }
"""

ICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
        'fill="#1f77b4"/><path d="M4 12V4h5a2 2 0 0 1 0 4H4" stroke="#fff" stroke-width="2" fill="none"/></svg>')

# Refreshes the counters every 2 s from /api/status (elements carrying data-live="kernel/field"
# or data-live="bugs/new" and the like); the charts follow with a reload once a minute.
LIVE_JS = """
(function () {
  function refresh() {
    fetch('/api/status').then(function (r) { return r.json(); }).then(function (s) {
      document.querySelectorAll('[data-live]').forEach(function (el) {
        var path = el.getAttribute('data-live').split('/'), value;
        if (path[0] === 'bugs' || path[0] === 'follow_ups') { value = s[path[0]][path[1]]; }
        else if (path[0] === 'findings') { value = s.findings; }
        else { s.kernels.forEach(function (k) { if (k.name === path[0]) { value = k[path[1]]; } }); }
        if (value !== undefined) { el.textContent = String(value); }
      });
      var when = document.getElementById('updated');
      if (when) { when.textContent = new Date().toISOString().slice(11, 19) + ' UTC'; }
    }).catch(function () {});
  }
  setInterval(refresh, 2000);
  setTimeout(function () { location.reload(); }, 60000);
  refresh();
})();
"""


def _when(epoch) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(epoch))) if epoch else ""


def page(title: str, body: str, live: bool = False) -> str:
    script = '<script src="/static/live.js"></script>' if live else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} - procfuzz</title>'
            f'<link rel="stylesheet" href="/static/style.css"><link rel="icon" href="/static/icon.svg"></head><body>'
            f'<nav><b>procfuzz serve</b> &nbsp; <a href="/">dashboard</a><a href="/bugs">bugs</a>'
            f'<a href="/api/status">API</a></nav><h1>{escape(title)}</h1>{body}{script}</body></html>')


def dashboard(status: dict, points: list[dict], bugs: list[dict], follow_ups: list[dict],
              workers: list[dict] = ()) -> str:
    bug_counters = "".join(f'<div class="counter">{s} bugs<b data-live="bugs/{s}">{status["bugs"][s]}</b></div>'
                           for s in BUG_STATUSES)
    counters = (f'<div class="counters" id="totals">{bug_counters}<div class="counter">findings'
                f'<b data-live="findings/all">{status["findings"]}</b></div>'
                f'<div class="counter">guests<b>{status["guests"]["in_use"]} / {status["guests"]["capacity"]}</b></div></div>')
    metrics = [("programs/s", "programs_per_second"), ("model features", "features"), ("corpus programs", "corpus"),
               ("findings", "findings"), ("VM restarts", "restarts")]
    if any(point.get("kernel_functions") for point in points):      # some kernel runs with kernel_coverage
        metrics.insert(2, ("kernel functions reached", "kernel_functions"))
    charts = "".join(line_chart(title, series_of(points, metric)) for title, metric in metrics)
    body = (f'<p>Since {_when(status["since"])}; database: {escape(status["database"])}; counters updated '
            f'<span id="updated">now</span>.</p>{counters}<h2>Kernels</h2>{_kernel_table(status["kernels"])}'
            f'<h2>Remote workers</h2>{_worker_table(workers)}<h2>Over time</h2><div class="charts">{charts}</div>'
            f'<h2>Latest bugs</h2>{_bug_table(bugs[:15])}<h2>Follow-ups</h2>{_follow_up_table(follow_ups[:15])}')
    return page("Dashboard", body, live=True)


def _kernel_table(kernels: list[dict]) -> str:
    fields = ("programs", "programs_per_second", "features", "corpus", "findings", "restarts")
    rows = []
    for k in kernels:
        name = escape(k["name"])
        cells = "".join(f'<td data-live="{name}/{f}">{escape(str(k.get(f, "")))}</td>' for f in fields)
        rows.append(f'<tr><td>{name}</td><td>{escape(k["label"])}</td><td>{k["workers"]}</td>'
                    f'<td data-live="{name}/state">{escape(k["state"])}</td>{cells}</tr>')
    head = "".join(f"<th>{h}</th>" for h in ("kernel", "label", "workers", "state", "programs", "programs/s",
                                               "features", "corpus", "findings", "VM restarts"))
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _worker_table(workers: list[dict]) -> str:
    """Campaigns elsewhere that report here (`run --report-to`); a worker silent for a minute is
    marked stale (stopped, or cut off from the service)."""
    if not workers:
        return "<p>None report here (<code>procfuzz run --report-to URL</code>).</p>"
    fields = ("programs", "features", "kernel_functions", "findings", "restarts", "host_faults")
    rows = "".join(f'<tr{" class=stale" if w["stale"] else ""}><td>{escape(w["name"])}</td><td>{escape(w["kernel"])}</td>'
                   + "".join(f"<td>{w[f]}</td>" for f in fields)
                   + f'<td>{_when(w["updated"])}{" (stale)" if w["stale"] else ""}</td></tr>' for w in workers)
    head = "".join(f"<th>{h}</th>" for h in ("worker", "kernel", "programs", "features", "kernel functions",
                                               "findings", "VM restarts", "host faults", "last report"))
    return f"<table><tr>{head}</tr>{rows}</table>"


def _bug_table(bugs: list[dict]) -> str:
    if not bugs:
        return "<p>No bugs yet.</p>"
    rows = "".join(f'<tr><td><a href="/bugs/{b["id"]}">{escape(clean(b["bug_key"]))}</a></td><td>{escape(b["cls"])}</td>'
                   f'<td class="status-{escape(b["status"])}">{escape(b["status"])}</td><td>{b["count"]}</td>'
                   f'<td>{escape(", ".join(b["kernels"]))}</td><td>{_when(b["first_seen"])}</td>'
                   f'<td>{_when(b["last_seen"])}</td></tr>' for b in bugs)
    return ("<table><tr><th>bug</th><th>class</th><th>status</th><th>findings</th><th>kernels</th>"
            f"<th>first seen</th><th>last seen</th></tr>{rows}</table>")


def _follow_up_table(follow_ups: list[dict]) -> str:
    if not follow_ups:
        return "<p>None yet.</p>"
    rows = "".join(f'<tr><td><a href="/bugs/{f["bug_id"]}">{escape(clean(f["bug_key"]))}</a></td>'
                   f'<td>{escape(f["state"])} {escape(f["step"])}</td><td>{escape(clean(f["detail"]))}</td>'
                   f'<td>{_when(f["updated"])}</td></tr>' for f in follow_ups)
    return f"<table><tr><th>bug</th><th>state</th><th>result</th><th>updated</th></tr>{rows}</table>"


def bug_list(bugs: list[dict], filters: dict[str, str]) -> str:
    options = "".join(f'<option{" selected" if filters.get("status") == s else ""}>{s}</option>' for s in BUG_STATUSES)
    form = (f'<form method="get" action="/bugs">status <select name="status"><option value="">any</option>{options}'
            f'</select> class <input name="cls" value="{escape(filters.get("cls", ""))}" size="10"> kernel '
            f'<input name="kernel" value="{escape(filters.get("kernel", ""))}" size="20"> key contains '
            f'<input name="q" value="{escape(filters.get("q", ""))}" size="20"> <button>filter</button></form>')
    as_json = "/api/bugs" + (f"?{urlencode(filters)}" if filters else "")
    return page("Bugs", f'{form}<p>{len(bugs)} bugs (<a href="{escape(as_json)}">JSON</a>)</p>{_bug_table(bugs)}')


def bug_page(bug: dict, finding: Finding | None, minimized: str | None, has_repro_c: bool) -> str:
    facts = (f'<table><tr><th>class</th><td>{escape(bug["cls"])}</td></tr>'
             f'<tr><th>status</th><td class="status-{escape(bug["status"])}">{escape(bug["status"])}</td></tr>'
             f'<tr><th>findings</th><td>{bug["count"]}</td></tr><tr><th>kernels</th><td>'
             f'{escape(", ".join(bug["kernels"]))}</td></tr><tr><th>first / last seen</th><td>'
             f'{_when(bug["first_seen"])} / {_when(bug["last_seen"])}</td></tr>'
             + (f'<tr><th>note</th><td>{escape(bug["note"])}</td></tr>' if bug["note"] else "") + "</table>")
    symptoms = "".join(f"<li><code>{escape(clean(sig))}</code> ({n}x)</li>" for sig, n in bug["signatures"])
    parts = [facts, f"<h2>Signatures</h2><ul>{symptoms}</ul>", _reproducibility(bug), _follow_up(bug)]
    if minimized is not None:
        parts.append(f"<h2>Minimised program</h2><pre>{escape(clean(minimized))}</pre>")
    if has_repro_c:
        parts.append(f'<p><a href="/api/bugs/{bug["id"]}/reproducer.c" download>Download the C reproducer</a></p>')
    if finding is not None:
        parts.append(_traces(finding))
    parts.append(_findings(bug["findings"]))
    return page(f"Bug {bug['id']}: {clean(bug['bug_key'])}", "".join(parts))


def _reproducibility(bug: dict) -> str:
    if not bug["reproducibility"]:
        return "<h2>Reproducibility</h2><p>Not re-run yet.</p>"
    rows = "".join(f'<tr><td>{escape(r["kernel"])}</td><td>{r["diverged"]} of {r["runs"]}</td>'
                   f'<td>{"fixed" if r["fixed"] else ""}</td><td>{_when(r["checked"])}</td></tr>'
                   for r in bug["reproducibility"])
    return f"<h2>Reproducibility</h2><table><tr><th>kernel</th><th>showed the bug</th><th></th><th>checked</th></tr>{rows}</table>"


def _follow_up(bug: dict) -> str:
    f = bug["follow_up"]
    if not f:
        return ""
    doing = f" ({escape(f['step'])})" if f["step"] else ""
    detail = f": {escape(clean(f['detail']))}" if f["detail"] else ""
    return f"<h2>Follow-up</h2><p>{escape(f['state'])}{doing}{detail}</p>"


def _traces(finding: Finding) -> str:
    """The representative's ops with the model's and the kernel's results side by side."""
    marked = finding.divergence.index
    rows = []
    for index, op in enumerate(finding.program.ops):
        want = finding.expected.results[index] if index < len(finding.expected.results) else ""
        got = finding.actual.results[index] if index < len(finding.actual.results) else ""
        same = index < len(finding.actual.results) and result_matches(want, got)
        css = ' class="divergent"' if index == marked else ("" if same else ' class="differs"')
        rows.append(f"<tr{css}><td>{index}</td><td><code>{escape(clean(op.to_text()))}</code></td>"
                    f"<td><code>{escape(clean(want))}</code></td><td><code>{escape(clean(got))}</code></td>"
                    f"<td>{'&lt;&lt; divergent op' if index == marked else ''}</td></tr>")
    outcome = "" if finding.actual.outcome == "ok" else \
        f"<p>Kernel outcome: {escape(finding.actual.outcome)}: {escape(clean(finding.actual.title))}</p>"
    console = f"<h3>Console</h3><pre>{escape(clean(finding.console[:20000]))}</pre>" if finding.console else ""
    return (f"<h2>Traces of the representative finding</h2><p>{escape(clean(finding.divergence.summary()))}</p>"
            f"<table id=\"traces\"><tr><th>#</th><th>op</th><th>model</th><th>kernel ({escape(finding.kernel)})</th>"
            f"<th></th></tr>{''.join(rows)}</table>{outcome}{console}")


def _findings(findings: list[dict]) -> str:
    rows = "".join(f'<tr><td><a href="/api/findings/{f["id"]}">{escape(f["program_id"])}</a></td>'
                   f'<td>{escape(f["kernel"])}</td><td>{_when(f["recorded"])}</td><td>{escape(f["source"])}</td></tr>'
                   for f in findings[:200])
    return f"<h2>Findings</h2><table><tr><th>program</th><th>kernel</th><th>recorded</th><th>source</th></tr>{rows}</table>"
