"""The user documentation stays true to the repository: docs/benchmarks.md is what
bench/render.py makes of bench/results/, and every relative link in README.md and docs/*.md
points at a file or directory that exists."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def relative_links(text: str) -> list[str]:
    text = FENCE.sub("", text)            # a link-like text in a code block is not a link
    return [target for target in LINK.findall(text)
            if not re.match(r"[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")]


def test_benchmarks_page_is_rendered_from_the_results():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "render.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _render_module():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import render
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return render


def test_every_result_names_its_command_date_kernel_and_machine():
    render = _render_module()
    results = sorted((ROOT / "bench" / "results").glob("*.json"))
    assert results
    for path in results:
        render.load(path)                 # raises ResultError on a missing field or a ragged table


def test_check_fails_until_the_page_is_rendered_again(tmp_path, monkeypatch):
    render = _render_module()
    results, page = tmp_path / "results", tmp_path / "benchmarks.md"
    results.mkdir()
    (results / "r.json").write_text('{"title": "t", "command": "c", "date": "d", "kernel": "k", '
                                    '"machine": "m", "figures": {"x": 1}}')
    monkeypatch.setattr(render, "RESULTS", results)
    monkeypatch.setattr(render, "OUTPUT", page)
    page.write_text("# Benchmarks\n")
    assert render.main(["--check"]) == 1
    assert render.main([]) == 0 and "| x | 1 |" in page.read_text()
    assert render.main(["--check"]) == 0
    (results / "bad.json").write_text('{"title": "no command"}')
    assert render.main(["--check"]) == 2


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files(doc):
    broken = []
    for target in relative_links(doc.read_text()):
        path = target.split("#", 1)[0]
        if path and not (doc.parent / path).exists():
            broken.append(target)
    assert broken == []
