"""Kernel failure reports in console output: find the first one and give it a one-line title.

Titles follow syzkaller's habit of naming the faulting function rather than addresses, so the
same bug gets the same title on every run: ``BUG: unable to handle page fault in proc_sys_compare``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# (pattern searched in a console line, title template, whether to append " in <RIP function>")
_REPORTS = [
    (re.compile(r"WARNING: CPU: \d+ PID: \d+ at \S+ (?P<func>[\w.]+)\+"), "WARNING in {func}", False),
    (re.compile(r"WARNING: (?P<what>.*)"), "WARNING: {what}", True),
    (re.compile(r"BUG: unable to handle page fault"), "BUG: unable to handle page fault", True),
    (re.compile(r"BUG: kernel NULL pointer dereference"), "BUG: kernel NULL pointer dereference", True),
    (re.compile(r"BUG: soft lockup"), "BUG: soft lockup", True),
    (re.compile(r"BUG: (?P<what>[^,\[]*)"), "BUG: {what}", True),
    (re.compile(r"kernel BUG at (?P<where>\S+?)!?$"), "kernel BUG at {where}", True),
    (re.compile(r"general protection fault"), "general protection fault", True),
    (re.compile(r"INFO: task (?P<comm>\S+?):\d+ blocked for more than"), "INFO: task hung: {comm}", False),
    (re.compile(r"rcu: INFO: \S+ (self-)?detected stall"), "INFO: rcu detected stall", True),
    (re.compile(r"Kernel panic - not syncing: (?P<what>.*)"), "Kernel panic - not syncing: {what}", False),
]
_PREFIX = re.compile(r"^\[\s*\d+\.\d+\]\s*(\[\s*[CT]\d+\]\s*)?")
_RIP = re.compile(r"RIP: \d{4}:(?P<func>[\w.]+)\+0x")
EXCERPT_BEFORE = 5
EXCERPT_LINES = 300
TITLE_LIMIT = 200


@dataclass(frozen=True)
class Report:
    title: str
    excerpt: str


def clean_lines(text: str) -> list[str]:
    """Console text -> lines without printk timestamps, carriage returns or control characters."""
    lines = []
    for raw in text.replace("\r", "").split("\n"):
        line = "".join(ch if ch.isprintable() else "?" for ch in raw)
        lines.append(_PREFIX.sub("", line))
    return lines


def find_report(text: str) -> Report | None:
    lines = clean_lines(text)
    for index, line in enumerate(lines):
        for pattern, template, with_rip in _REPORTS:
            match = pattern.search(line)
            if not match:
                continue
            title = template.format(**{k: v.strip() for k, v in match.groupdict().items()})
            if with_rip:
                rip = next((m for later in lines[index + 1:] if (m := _RIP.search(later))), None)
                if rip:
                    title += f" in {rip.group('func')}"
            start = max(0, index - EXCERPT_BEFORE)
            excerpt = "\n".join(lines[start:start + EXCERPT_LINES])
            return Report(title[:TITLE_LIMIT], excerpt)
    return None
