"""The programs procfuzz ships: seeds and regression programs (replayed first by every
campaign, and run as tests) and the known-issues file."""

from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED_DIRS = (HERE / "seeds", HERE / "regressions")
KNOWN_ISSUES = HERE / "known-issues.toml"
