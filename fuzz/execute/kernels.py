"""Opening the two targets of a differential run: the kernel (a pinned Debian kernel booted in
QEMU, with an injected zoo bug or out-of-tree modules) and the model with that kernel's profile.

Every command, benchmark and test that needs a kernel takes a ``TargetOpener``: the default
boots QEMU (``open_qemu``); tests pass a fake kernel instead.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, ContextManager, Iterator

from reference.profile import KernelProfile
from reference.program import Program
from reference.trace import Trace
from targets.base import Target
from targets.model_target import ModelTarget

from fuzz.errors import ToolError


@dataclass(frozen=True)
class KernelSpec:
    """What to boot: a kernel pin name (None: the default pin), an injected zoo bug, modules
    (targets.qemu.ModuleSpec) loaded after every boot, and the guest's vCPUs; coverage: with
    the kernel coverage probe (traces carry extra["kcov"]; it observes only: same label)."""
    pin: str | None = None
    zoo: str | None = None
    modules: tuple = ()
    cpus: int = 2
    coverage: str | None = None     # the probe's parameters (targets.coverage FEEDBACK, EXACT); None: off

    @classmethod
    def from_options(cls, pin: str | None, zoo: str | None = None, module_texts=(), cpus: int = 2) -> "KernelSpec":
        """From the command line's --kernel, --zoo and --load-module PATH.ko[:params] texts."""
        from targets.qemu import ModuleSpec
        try:
            return cls(pin, zoo, tuple(ModuleSpec.parse(text) for text in module_texts), cpus)
        except ValueError as err:
            raise ToolError(str(err)) from None

    def on(self, pin: str | None) -> "KernelSpec":
        return replace(self, pin=pin)

    @property
    def label(self) -> str:
        """The label findings of this kernel carry (targets.qemu.kernel_label)."""
        from targets.kernels import KernelError, resolve
        from targets.qemu import kernel_label
        try:
            return kernel_label(resolve(self.pin).label, self.zoo, self.modules)
        except KernelError as err:
            raise ToolError(str(err)) from None


TargetOpener = Callable[[KernelSpec], ContextManager[Target]]


@contextmanager
def open_qemu(spec: KernelSpec) -> Iterator[Target]:
    """A started QemuTarget; what keeps it from starting is a ToolError with the reason."""
    from targets.kernels import KernelError
    from targets.qemu import ModuleLoadError, QemuTarget
    from targets.vm import VmError
    from targets.coverage.lists import ListError
    from targets.zoo.build import ZooBuildError
    try:
        target = QemuTarget(spec.pin, zoo=spec.zoo, modules=spec.modules, cpus=spec.cpus, coverage=spec.coverage)
        target.start()
    except (KernelError, ListError, ModuleLoadError, ZooBuildError, VmError, ValueError) as err:
        raise ToolError(str(err)) from None
    try:
        yield target
    finally:
        target.close()


def profile_for(kernel: str | None) -> KernelProfile:
    """The /proc profile of a kernel pin, package or label (None: the default pin)."""
    from targets.kernels import KernelError, load_profile
    from targets.qemu import stock_label
    try:
        return load_profile(stock_label(kernel) if kernel else None)
    except KernelError as err:
        raise ToolError(str(err)) from None


def model_for(kernel: str | None) -> ModelTarget:
    """The model with a kernel's profile: what that kernel must show."""
    return ModelTarget(profile_for(kernel))


LOST = "lost"


def run_on_kernel(target: Target, program: Program) -> Trace:
    """The kernel's trace.  A guest lost with no kernel report is the host's doing until shown
    otherwise: the target has rebooted, the program runs again on the fresh guest, and only if
    that guest goes away too is it the kernel's crash."""
    actual = target.run(program)
    if actual.outcome != LOST:
        return actual
    again = target.run(program)
    if again.outcome != LOST:
        return again
    return replace(again, outcome="crash",
                   title="guest lost running this program, twice, with no kernel report")
