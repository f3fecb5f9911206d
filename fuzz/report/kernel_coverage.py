"""The HTML view of ``procfuzz coverage``: one self-contained page per kernel, next to the triage
report (``kcov-<kernel>.html`` and ``kcov-<kernel>.json``): per source file the share reached,
then every probed function with its calls and programs, the never-reached ones marked.
Like the triage page it loads and runs nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fuzz.record.programs import atomic_write
from fuzz.report.reports import _CSS, _e
from fuzz.triage.kernel_coverage import KernelCoverage

_EXTRA_CSS = """
table.kcov td, table.kcov th { border: 1px solid #ccd; padding: 3px 6px; text-align: left; }
tr.unreached > td { background: #fdd; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
"""


def page_name(kernel: str) -> str:
    """kcov-<kernel>: the kernel's pin or label with anything but [\\w.+-] made '_'."""
    return "kcov-" + re.sub(r"[^\w.+-]", "_", kernel)[:120]


def html_page(coverage: KernelCoverage) -> str:
    title = (f"kernel coverage on {coverage.kernel}: {coverage.reached} of {len(coverage.probes.names)} "
             f"functions ({coverage.fraction:.1%}), {coverage.runs} programs")
    head = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
            f"<title>{_e(title)}</title>\n<style>{_CSS}{_EXTRA_CSS}</style></head>\n<body>\n"
            f"<h1>procfuzz kernel coverage</h1>\n<p class=\"summary\">{_e(title)}</p>\n")
    files = ["<h2>Per file</h2>", "<table class=\"kcov\"><thead><tr><th>file</th><th>reached</th><th>probed</th>"
             "<th>share</th></tr></thead><tbody>"]
    files += [f"<tr><td>{_e(path)}</td><td class=\"n\">{reached}</td><td class=\"n\">{total}</td>"
              f"<td class=\"n\">{reached / total:.1%}</td></tr>" for path, reached, total in coverage.by_file()]
    files.append("</tbody></table>")
    functions = ["<h2>Per function</h2><p class=\"note\">Red: never reached by the corpus (a generator or "
                 "model blind spot: docs/model-gaps.md).</p>",
                 "<table class=\"kcov\"><thead><tr><th>file</th><th>function</th><th>calls</th><th>programs</th>"
                 "</tr></thead><tbody>"]
    functions += [f"<tr class=\"{'reached' if coverage.hits[name] else 'unreached'}\"><td>{_e(path)}</td>"
                  f"<td><code>{_e(name)}</code></td><td class=\"n\">{coverage.hits[name]}</td>"
                  f"<td class=\"n\">{coverage.programs[name]}</td></tr>" for path, name in coverage.probes.functions]
    functions.append("</tbody></table>")
    failed = [f"<h2>Failed runs</h2><pre>{_e(chr(10).join(coverage.failed))}</pre>"] if coverage.failed else []
    return head + "\n".join(files + functions + failed) + "\n</body></html>\n"


def write_coverage(coverage: KernelCoverage, out_dir: Path, kernel: str) -> dict[str, Path]:
    """Writes the page and its JSON into out_dir; returns them by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = page_name(kernel)
    paths = {"html": out_dir / f"{stem}.html", "json": out_dir / f"{stem}.json"}
    atomic_write(paths["html"], html_page(coverage))
    atomic_write(paths["json"], json.dumps(coverage.to_json(), indent=1) + "\n")
    return paths
