"""Triage reports: Markdown and one self-contained HTML page for people, JSON, JUnit XML and
SARIF 2.1.0 for CI systems.  One row (test case, result) per Bug.

Everything that comes from a finding is untrusted (kernel console output above all): HTML and
XML escape it, control characters become U+FFFD, and the HTML page loads nothing and runs
nothing (its Content-Security-Policy forbids scripts and every external resource).
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from reference.trace import result_matches

from fuzz.record import store
from fuzz.record.programs import atomic_write
from fuzz.triage.bugs import Bug

REPORT_VERSION = 1
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
CONSOLE_LINES = 200
CONSOLE_CHARS = 20000
REPRO_CHARS = 100000
FINGERPRINT = "procfuzzSignature/v1"
# Characters XML 1.0 cannot carry (and terminals should not get): C0 controls but tab and
# newline, DEL, C1 controls, lone surrogates, the two non-characters.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def clean(text: str) -> str:
    return _UNSAFE.sub("\ufffd", str(text))


def _when(epoch: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


def _excerpt(text: str, lines: int = CONSOLE_LINES, chars: int = CONSOLE_CHARS) -> str:
    """The start of a console excerpt (the report comes first in it), bounded."""
    kept = "\n".join(clean(text).splitlines()[:lines])
    return kept[:chars] + ("\n[... cut]" if len(kept) > chars else "")


def fingerprint(signature: str) -> str:
    return hashlib.sha256(signature.encode()).hexdigest()


def trace_rows(bug: Bug) -> list[tuple[int, str, str, str, bool]]:
    """(index, op, model result, kernel result, same) for every op of the representative."""
    finding = bug.representative
    rows = []
    for index, op in enumerate(finding.program.ops):
        want = finding.expected.results[index] if index < len(finding.expected.results) else ""
        got = finding.actual.results[index] if index < len(finding.actual.results) else ""
        same = index < len(finding.actual.results) and result_matches(want, got)
        rows.append((index, clean(op.to_text()), clean(want), clean(got), same))
    return rows


def _shown_program(bug: Bug) -> tuple[str, Path, str]:
    """(program text, its file, what it is): the minimised program if there is one."""
    if bug.minimized is not None:
        return bug.minimized.to_text(), store.minimized_path(bug.directory), f"minimised, {len(bug.minimized)} ops"
    program = bug.representative.program
    return program.to_text(), store.program_path(bug.directory), f"representative, {len(program)} ops, not minimised"


def _repro_text(bug: Bug) -> str:
    if bug.repro_c is None:
        return ""
    try:
        return clean(bug.repro_c.read_text(errors="replace")[:REPRO_CHARS])
    except OSError as err:
        return f"(unreadable: {err.strerror})"


def _reproducibility(bug: Bug) -> list[str]:
    return [f"{kernel}: {bug.verdict(kernel)}" for kernel in bug.reproducibility] or ["not measured"]


def _relative(path: Path, base: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()


def write_reports(bugs: list[Bug], out_dir: Path, meta: dict, source_root: Path | None = None) -> dict[str, Path]:
    """Write every report into ``out_dir``; returns report name -> path.  File paths in the
    reports are relative to ``out_dir``, in SARIF to ``source_root`` (a CI checkout) when the
    file lies below it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    documents = {
        "report.md": markdown(bugs, out_dir, meta),
        "report.html": html_page(bugs, out_dir, meta),
        "report.json": json.dumps(json_document(bugs, out_dir, meta), indent=1, sort_keys=True) + "\n",
        "junit.xml": junit(bugs),
        "report.sarif": json.dumps(sarif(bugs, out_dir, source_root), indent=1) + "\n",
    }
    paths = {}
    for name, text in documents.items():
        atomic_write(out_dir / name, text)
        (out_dir / name).chmod(0o644)        # for people and web servers, unlike a temporary file
        paths[name] = out_dir / name
    return paths


def _summary(bugs: list[Bug]) -> str:
    new, known = sum(bug.is_new for bug in bugs), sum(bug.is_known for bug in bugs)
    return (f"{len(bugs)} bugs, {new} new, {len(bugs) - new - known} unconfirmed, {known} known, "
            f"from {sum(b.count for b in bugs)} findings")


# ---- JSON ---------------------------------------------------------------------------------------

def json_document(bugs: list[Bug], out_dir: Path, meta: dict) -> dict:
    return {"version": REPORT_VERSION, "meta": meta, "summary": _summary(bugs),
            "bugs": [_bug_document(bug, out_dir) for bug in bugs]}


def _bug_document(bug: Bug, out_dir: Path) -> dict:
    finding = bug.representative
    text, program_file, _ = _shown_program(bug)
    return {
        "signature": clean(bug.signature), "fingerprint": fingerprint(bug.signature), "class": bug.cls,
        "status": bug.status(), "new": bug.is_new, "note": clean(bug.note), "known_on": list(bug.known_on),
        "kernels": list(bug.kernels), "first_seen": bug.first_seen, "last_seen": bug.last_seen,
        "count": bug.count,
        "symptoms": [{"signature": clean(signature), "count": count} for signature, count in bug.symptoms],
        "reproducibility": {k: {"diverged": d, "runs": n, "verdict": bug.verdict(k)}
                            for k, (d, n) in bug.reproducibility.items()},
        "program": text, "program_file": _relative(program_file, out_dir), "minimized": bug.minimized is not None,
        "repro_c": _relative(bug.repro_c, out_dir) if bug.repro_c else None,
        "representative": {
            "id": finding.program.id, "directory": _relative(bug.directory, out_dir), "kernel": finding.kernel,
            "divergence": {k: clean(v) if isinstance(v, str) else v for k, v in finding.divergence.to_json().items()},
            "ops": [row[1] for row in trace_rows(bug)],
            "model": [clean(r) for r in finding.expected.results],
            "kernel_results": [clean(r) for r in finding.actual.results],
            "kernel_outcome": finding.actual.outcome, "kernel_title": clean(finding.actual.title),
        },
        "findings": [_relative(d, out_dir) for d in bug.directories],
    }


# ---- Markdown -----------------------------------------------------------------------------------

def _md_text(text: str) -> str:
    """Plain text in a Markdown table cell: no HTML, no cell breaks."""
    return html.escape(clean(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _md_code(text: str) -> str:
    """An inline code span that survives backticks and pipes in the text (GFM tables)."""
    text = clean(text).replace("\n", " ").replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_block(text: str, lang: str = "") -> str:
    fence = "`" * max(3, max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    return f"{fence}{lang}\n{clean(text).rstrip()}\n{fence}\n"


def markdown(bugs: list[Bug], out_dir: Path, meta: dict) -> str:
    lines = ["# procfuzz triage", "", _summary(bugs) + ".", ""]
    lines += [f"- {_md_text(key)}: {_md_text(json.dumps(value) if not isinstance(value, str) else value)}"
              for key, value in meta.items()]
    lines += ["", "| # | status | signature | class | kernels | first seen | last seen | count | reproducibility |",
              "|---|---|---|---|---|---|---|---|---|"]
    for number, bug in enumerate(bugs, 1):
        cells = [str(number), f"**{_md_text(bug.status())}**" if bug.is_new else bug.status(), _md_code(bug.signature),
                 _md_text(bug.cls), "<br>".join(map(_md_text, bug.kernels)), _when(bug.first_seen), _when(bug.last_seen),
                 str(bug.count), "<br>".join(map(_md_text, _reproducibility(bug)))]
        lines.append("| " + " | ".join(cells) + " |")
    for number, bug in enumerate(bugs, 1):
        lines += ["", f"## {number}. {_md_code(bug.signature)}", ""]
        if bug.note:
            lines += [f"Known issue: {_md_text(bug.note)}", ""]
        lines += [f"Divergence: {_md_text(bug.representative.divergence.summary())}", ""]
        lines += ["Signatures: " + ", ".join(f"{_md_code(signature)} ({count})" for signature, count in bug.symptoms), ""]
        text, program_file, what = _shown_program(bug)
        lines += [f"Program ({what}): `{_relative(program_file, out_dir)}`; finding "
                  f"`{_relative(bug.directory, out_dir)}` on {_md_text(bug.representative.kernel)}", ""]
        lines.append(_md_block(text))
        if bug.repro_c:
            lines += [f"C reproducer: `{_relative(bug.repro_c, out_dir)}`", ""]
        lines += ["| # | op | model | kernel | |", "|---|---|---|---|---|"]
        divergent = bug.representative.divergence.index
        for index, op, want, got, same in trace_rows(bug):
            mark = "**<<**" if index == divergent else ("" if same else "<<")
            lines.append(f"| {index} | {_md_code(op)} | {_md_code(want)} | {_md_code(got)} | {mark} |")
        if bug.representative.actual.outcome != "ok":
            lines += ["", f"Kernel outcome: {bug.representative.actual.outcome}: "
                          f"{_md_text(bug.representative.actual.title)}"]
        if bug.representative.console.strip():
            lines += ["", "<details><summary>console excerpt</summary>", "",
                      _md_block(_excerpt(bug.representative.console)), "</details>"]
    return "\n".join(lines) + "\n"


# ---- HTML ---------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d1d1f; }
table { border-collapse: collapse; }
table.bugs > thead th { position: sticky; top: 0; background: #eef; }
table.bugs > tbody > tr > td, table.bugs > thead th { border: 1px solid #ccd; padding: 6px; vertical-align: top; }
tr.bug.new > td.status { background: #fdd; font-weight: bold; }
tr.bug.known > td.status { background: #dfd; }
td.signature { min-width: 18em; }
td.signature code { font-weight: bold; white-space: pre-wrap; overflow-wrap: anywhere; }
.note { color: #555; font-size: 12px; max-width: 40em; white-space: pre-wrap; }
pre { background: #f6f6f8; padding: 6px; overflow: auto; max-width: 70em; max-height: 30em; margin: 4px 0; }
div.evidence { max-width: max(30em, calc(100vw - 50em)); overflow-x: auto; }
div.evidence code { word-break: break-all; }
table.trace td { font-family: monospace; font-size: 12px; padding: 1px 6px; border-bottom: 1px solid #eee;
                 white-space: pre-wrap; word-break: break-all; max-width: 30em; }
table.trace tr.differs { background: #fff4cc; }
table.trace tr.divergent { background: #f99; font-weight: bold; }
summary { cursor: pointer; color: #225; }
"""


def _e(text) -> str:
    return html.escape(clean(str(text)), quote=True)


def html_page(bugs: list[Bug], out_dir: Path, meta: dict) -> str:
    head = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
            f"<title>procfuzz triage: {_e(_summary(bugs))}</title>\n<style>{_CSS}</style></head>\n<body>\n"
            f"<h1>procfuzz triage</h1>\n<p class=\"summary\">{_e(_summary(bugs))}</p>\n<ul class=\"meta\">"
            + "".join(f"<li>{_e(k)}: {_e(v if isinstance(v, str) else json.dumps(v))}</li>" for k, v in meta.items())
            + "</ul>\n")
    columns = ("#", "status", "signature", "class", "kernels", "first seen", "last seen", "count",
               "reproducibility", "program, traces, console")
    table = ["<table class=\"bugs\"><thead><tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr></thead><tbody>"]
    table += [_html_row(number, bug, out_dir) for number, bug in enumerate(bugs, 1)]
    table.append("</tbody></table>")
    return head + "\n".join(table) + "\n</body></html>\n"


def _html_row(number: int, bug: Bug, out_dir: Path) -> str:
    finding = bug.representative
    note = f"<div class=\"note\">{_e(bug.note)}</div>" if bug.note else ""
    text, program_file, what = _shown_program(bug)
    trace = "".join(
        f"<tr class=\"{'divergent' if index == finding.divergence.index else '' if same else 'differs'}\">"
        f"<td>{index}</td><td>{_e(op)}</td><td>{_e(want)}</td><td>{_e(got)}</td></tr>"
        for index, op, want, got, same in trace_rows(bug))
    outcome = ("" if finding.actual.outcome == "ok"
               else f"<div>kernel outcome: {_e(finding.actual.outcome)}: {_e(finding.actual.title)}</div>")
    console = (f"<details class=\"console\"><summary>console excerpt</summary>"
               f"<pre>{_e(_excerpt(finding.console))}</pre></details>"
               if finding.console.strip() else "")
    repro = (f"<details class=\"repro\"><summary>C reproducer ({_e(_relative(bug.repro_c, out_dir))})</summary>"
             f"<pre>{_e(_repro_text(bug))}</pre></details>" if bug.repro_c else "")
    # Not minimised, the program is the trace's op column: no need to show it twice.
    program = f"<pre class=\"program\">{_e(text)}</pre>" if bug.minimized is not None else ""
    symptoms = "".join(f"<li><code>{_e(signature)}</code> ({count})</li>" for signature, count in bug.symptoms)
    evidence = (f"<div class=\"evidence\"><div class=\"divergence\">{_e(finding.divergence.summary())}</div>"
                f"<details class=\"symptoms\"><summary>{len(bug.symptoms)} signature(s)</summary><ul>{symptoms}</ul></details>"
                f"<div>program ({_e(what)}): <code>{_e(_relative(program_file, out_dir))}</code></div>{program}"
                f"<details class=\"trace\" open><summary>model vs kernel, program {_e(finding.program.id)} on "
                f"{_e(finding.kernel)}</summary><table class=\"trace\"><tr><th>#</th><th>op</th><th>model</th>"
                f"<th>kernel</th></tr>{trace}</table>{outcome}</details>{console}{repro}</div>")
    cells = [str(number), _e(bug.status()), f"<code>{_e(bug.signature)}</code>{note}", _e(bug.cls),
             "<br>".join(map(_e, bug.kernels)), _e(_when(bug.first_seen)), _e(_when(bug.last_seen)),
             str(bug.count), "<br>".join(map(_e, _reproducibility(bug))), evidence]
    cls = bug.status().split()[0]
    classes = ("status", "signature", "class", "kernels", "first-seen", "last-seen", "count", "reproducibility")
    tds = "".join(f"<td class=\"{c}\">{cell}</td>" for c, cell in zip(("number", *classes, "evidence"), cells))
    return f"<tr class=\"bug {cls}\" id=\"bug-{number}\">{tds}</tr>"


# ---- JUnit XML ----------------------------------------------------------------------------------

def junit(bugs: list[Bug]) -> str:
    """One test case per bug.  A new bug fails; a known one is skipped with its note: it is
    neither a regression to fail on nor a pass (the kernel still has the bug), and CI systems
    show skipped cases with their message."""
    failures = sum(bug.is_new for bug in bugs)
    counts = {"tests": str(len(bugs)), "failures": str(failures), "errors": "0",
              "skipped": str(len(bugs) - failures)}
    suites = ET.Element("testsuites", name="procfuzz triage", **counts)
    suite = ET.SubElement(suites, "testsuite", name="procfuzz.triage", **counts)
    for bug in bugs:
        case = ET.SubElement(suite, "testcase", classname=clean(f"procfuzz.{bug.cls}"), name=clean(bug.signature))
        details = "\n".join([f"kernels: {', '.join(bug.kernels)}", f"findings: {bug.count}",
                             f"first seen: {_when(bug.first_seen)}", f"last seen: {_when(bug.last_seen)}",
                             f"reproducibility: {'; '.join(_reproducibility(bug))}",
                             f"finding: {bug.directory}", bug.representative.divergence.summary(), "",
                             _shown_program(bug)[0]])
        if bug.is_new:
            failure = ET.SubElement(case, "failure", type=clean(bug.cls),
                                    message=clean(f"{bug.status()}: {bug.signature}"))
            failure.text = clean(details)
        else:
            reason = f"unconfirmed: {bug.unconfirmed}" if bug.unconfirmed else f"known issue: {bug.note}"
            ET.SubElement(case, "skipped", message=clean(reason))
            ET.SubElement(case, "system-out").text = clean(details)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


# ---- SARIF 2.1.0 --------------------------------------------------------------------------------

def sarif(bugs: list[Bug], out_dir: Path, source_root: Path | None = None) -> dict:
    """One rule per signature, one result per bug located at its (minimised) program file and,
    for the representative, the divergent op's line; partialFingerprints carry the signature
    hash so code scanning tracks a bug across nightly uploads."""
    bases = {"REPORTDIR": Path(out_dir).resolve()}
    if source_root is not None:
        bases["%SRCROOT%"] = Path(source_root).resolve()
    rules, results = [], []
    for index, bug in enumerate(bugs):
        rule_id = f"procfuzz/{fingerprint(bug.signature)[:16]}"
        rules.append({
            "id": rule_id, "name": clean(bug.signature),
            "shortDescription": {"text": clean(bug.signature)},
            "fullDescription": {"text": clean(f"procfuzz finding of class {bug.cls}"
                                              + (f"; known issue: {bug.note}" if bug.note else ""))},
            "help": {"text": "Reproduce with `procfuzz repro <finding directory>`."},
            "defaultConfiguration": {"level": "error"},
            "properties": {"tags": ["procfuzz", bug.cls]},
        })
        _, program_file, what = _shown_program(bug)
        divergent = bug.representative.divergence.index
        shows_divergent_op = (bug.minimized is None and divergent is not None
                              and divergent < len(bug.representative.program))
        line = divergent + 1 if shows_divergent_op else 1
        base = "%SRCROOT%" if source_root is not None and \
            Path(program_file).resolve().is_relative_to(bases["%SRCROOT%"]) else "REPORTDIR"
        results.append({
            "ruleId": rule_id, "ruleIndex": index, "level": "error" if bug.is_new else "note",
            "message": {"text": clean(f"{bug.signature} ({bug.status()}): {bug.count} findings on "
                                      f"{', '.join(bug.kernels)}, last seen {_when(bug.last_seen)}; "
                                      f"{bug.representative.divergence.summary()}; program: {what}")},
            "locations": [{"physicalLocation": {
                "artifactLocation": {"uri": _relative(program_file, bases[base]), "uriBaseId": base},
                "region": {"startLine": line}}}],
            "partialFingerprints": {FINGERPRINT: fingerprint(bug.signature)},
            "properties": {"kernels": list(bug.kernels), "count": bug.count, "new": bug.is_new},
        })
    return {
        "$schema": SARIF_SCHEMA, "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "procfuzz", "rules": rules}},
            "originalUriBaseIds": {name: {"uri": path.as_uri() + "/"} for name, path in bases.items()},
            "results": results,
        }],
    }
