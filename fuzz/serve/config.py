"""procfuzz.toml: what `procfuzz serve` fuzzes and how it follows findings up.  This module
alone reads it::

    guests = 2                      # most QEMU guests at once: campaign workers and follow-ups
    database = "postgresql://fuzz@db/procfuzz"   # default: STATE/procfuzz.sqlite3
    known = "corpus/known-issues.toml"           # default: procfuzz's own

    [campaign]
    budget = "30m"                  # a campaign's length; it restarts from the grown corpus
    max_ops = 40

    [follow_up]
    enabled = true                  # false: new bugs wait in the queue for a manager that follows up
    minimize = true
    runs = 5                        # re-runs per kernel of the matrix
    kernels = ["6.12-cloud"]        # pins to reproduce on besides the fuzzed ones
    retries = 2                     # kernel runs per minimisation candidate

    [[kernel]]
    name = "6.1-zoo"                # default: the pin, plus "+BUG" with a zoo bug
    pin = "6.1-cloud"               # default: the pins file's default
    zoo = "stale_pid"               # optional: a bug-zoo bug injected (a canary)
    workers = 1
    leak_every = 10
    kernel_coverage = false         # true: with the kernel coverage probe (run --kernel-coverage)

``kernel = []`` (no kernel tables) makes a service that fuzzes nothing itself: it only takes
what remote workers report (`procfuzz run --report-to`), and follows up if enabled.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from fuzz.campaign.run import parse_duration
from fuzz.errors import ToolError
from fuzz.execute.kernels import KernelSpec
from fuzz.triage.minimize import DEFAULT_RETRIES
from targets.coverage import FEEDBACK


@dataclass(frozen=True)
class KernelConfig:
    name: str
    pin: str | None = None
    zoo: str | None = None
    workers: int = 1
    leak_every: int = 10
    kernel_coverage: bool = False

    @property
    def spec(self) -> KernelSpec:
        return KernelSpec(self.pin, self.zoo, coverage=FEEDBACK if self.kernel_coverage else None)


@dataclass(frozen=True)
class ServeConfig:
    kernels: tuple[KernelConfig, ...] = (KernelConfig("default"),)
    guests: int = 1
    database: str | None = None
    known: Path | None = None
    budget: float = 1800.0
    max_ops: int = 40
    follow_up: bool = True
    minimize: bool = True
    runs: int = 5
    follow_up_pins: tuple[str, ...] = ()
    retries: int = DEFAULT_RETRIES          # kernel runs per minimisation candidate (flaky bugs)

    def kernel(self, name: str) -> KernelConfig | None:
        return next((k for k in self.kernels if k.name == name), None)


def load_config(path: Path | None) -> ServeConfig:
    """The configuration of ``path`` (None: one worker on the default kernel); a ToolError
    names what is wrong."""
    if path is None:
        return ServeConfig()
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ToolError(f"{path}: {err}") from None
    try:
        return _parse(doc)
    except (TypeError, ValueError, KeyError) as err:
        raise ToolError(f"{path}: {err}") from None


def _parse(doc: dict) -> ServeConfig:
    kernels = tuple(_kernel(entry) for entry in doc.get("kernel", [{}]))
    names = [k.name for k in kernels]
    if len(set(names)) != len(names):
        raise ValueError(f"kernel names must differ: {names}")
    guests = _int(doc.get("guests", max((k.workers for k in kernels), default=1)), "guests")
    if any(k.workers > guests for k in kernels):
        raise ValueError(f"a kernel has more workers than guests = {guests}")
    campaign, follow_up = doc.get("campaign", {}), doc.get("follow_up", {})
    pins = follow_up.get("kernels", [])
    if not isinstance(pins, list) or not all(isinstance(p, str) for p in pins):
        raise ValueError("follow_up.kernels must be a list of pin names")
    return ServeConfig(kernels, guests, _text(doc.get("database")),
                       Path(doc["known"]) if "known" in doc else None,
                       parse_duration(str(campaign.get("budget", "30m"))),
                       _int(campaign.get("max_ops", 40), "campaign.max_ops"), bool(follow_up.get("enabled", True)),
                       bool(follow_up.get("minimize", True)), _int(follow_up.get("runs", 5), "follow_up.runs"),
                       tuple(pins), _int(follow_up.get("retries", DEFAULT_RETRIES), "follow_up.retries"))


def _kernel(entry: dict) -> KernelConfig:
    if not isinstance(entry, dict):
        raise ValueError("each [[kernel]] must be a table")
    pin, zoo = _text(entry.get("pin")), _text(entry.get("zoo"))
    name = _text(entry.get("name")) or ((pin or "default") + (f"+{zoo}" if zoo else ""))
    if not name.replace("-", "").replace("+", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"kernel name {name!r}: letters, digits and -+_. only (it names a directory)")
    coverage = entry.get("kernel_coverage", False)
    if not isinstance(coverage, bool):
        raise ValueError(f"kernel_coverage must be true or false, not {coverage!r}")
    return KernelConfig(name, pin, zoo, _int(entry.get("workers", 1), "workers"),
                        _int(entry.get("leak_every", 10), "leak_every", minimum=0), coverage)


def _int(value, what: str, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, not {value!r}")
    return value


def _text(value) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"expected a string, not {value!r}")
    return value or None
