"""Shared fixtures. The QEMU target is booted once per session: a TCG boot costs seconds."""

import pytest


@pytest.fixture(scope="session")
def qemu_target():
    """A booted QemuTarget on the default pinned kernel (fetched into the cache on first use)."""
    from targets.qemu import QemuTarget
    with QemuTarget() as target:
        yield target


@pytest.fixture(scope="session")
def qemu_target_612():
    """A booted QemuTarget on the pinned 6.12 cloud kernel (the newest series in the matrix)."""
    from targets.qemu import QemuTarget
    with QemuTarget("6.12-cloud") as target:
        yield target
