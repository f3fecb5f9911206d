"""Shared fixtures. The QEMU target is booted once per session: a TCG boot costs seconds."""

import pytest


@pytest.fixture(scope="session")
def qemu_target():
    """A booted QemuTarget on the default pinned kernel (fetched into the cache on first use)."""
    from targets.qemu import QemuTarget
    with QemuTarget() as target:
        yield target
