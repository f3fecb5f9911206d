"""The QEMU target: programs run by the guest agent on a real Debian kernel.

``QemuTarget.run(program) -> Trace`` has the same interface as the reference model's target.
Kernel failures become traces rather than exceptions: a crash (the console shows an
oops/BUG/WARNING/panic/stall report) or a hang (no reply before the watchdog) gives a trace
with outcome ``crash``/``hang``, a one-line title and the console excerpt in
``trace.extra["console"]``; the VM is then restarted so the next program runs on a clean kernel.
A guest that goes away with no kernel report (QEMU killed, OOM, a host problem, or a kernel
that reset without a word) is ``lost``: a harness event, counted in ``host_faults``, that the
engine re-runs before calling it a kernel bug. QEMU's own last words are in
``trace.extra["qemu_log"]``.
Only a VM that cannot be started raises: VmError, or BootFailed after BOOT_ATTEMPTS tries.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from reference.program import Program
from reference.trace import Trace
from targets.console import find_report
from targets.initramfs import AGENT_SOURCE, guest_image
from targets.kernels import KernelImage, resolve
from targets.protocol import (ChannelClosed, ChannelTimeout, ProtocolError, parse_hello, parse_kcov,
                              parse_results, split_kcov, text)
from targets.vm import Vm, VmError, choose_accel, exit_text

BOOT_TIMEOUT = 120.0        # TCG boots in ~5 s; generous for a loaded 2-core machine
BOOT_ATTEMPTS = 3           # failed boots in a row before the target gives up
WATCHDOG_BASE = 5.0         # sandbox set-up and teardown under TCG take tens of ms
WATCHDOG_PER_OP = 0.25
EXIT_GRACE = 10.0           # after the channel closes, time for QEMU to finish writing and exit


ZOO_MODULE = "/lib/modules/zoo.ko"
KCOV_MODULE = "/lib/modules/procfuzz_kcov.ko"
KCOV_LOAD_TIMEOUT = 60.0
EXTRA_MODULES = "lib/modules/extra"


class ModuleLoadError(RuntimeError):
    """A module given to the target (zoo or --load-module) did not load into the guest."""


class BootFailed(VmError):
    """The guest failed to boot BOOT_ATTEMPTS times in a row: the host cannot run this target
    now (its reason and tails are the last attempt's); a worker stops with this reason."""


@dataclass(frozen=True)
class ModuleSpec:
    """An out-of-tree module loaded into the guest after every boot (`--load-module`)."""
    path: Path
    params: str = ""

    @classmethod
    def parse(cls, text: str) -> "ModuleSpec":
        """``PATH.ko[:name=value ...]``."""
        path, _, params = text.partition(":")
        spec = cls(Path(path), params.strip())
        if spec.path.suffix != ".ko":
            raise ValueError(f"--load-module {text!r}: not a .ko file (PATH.ko[:params])")
        if not spec.path.is_file():
            raise ValueError(f"--load-module {text!r}: no such file {spec.path}")
        if not all(re.fullmatch(r"[\w.-]+(=[\w.,:/+-]*)?", word) for word in spec.params.split()):
            raise ValueError(f"--load-module {text!r}: parameters are space-separated name=value words")
        return spec

    @property
    def guest_path(self) -> str:
        return f"/{EXTRA_MODULES}/{self.path.name}"


@dataclass(frozen=True)
class FileRun:
    status: str     # "exit N", "signal N", "timeout", or "crash" (output: the report title)
    output: str


class QemuTarget:
    measure_leaks = False       # send L frames: slab counts after each program (leak oracle)
    coverage: str | None = None         # the coverage probe's parameters when loaded (see __init__)
    coverage_missing: tuple[str, ...] = ()   # listed functions the probe did not find

    def __init__(self, kernel: str | KernelImage | None = None, *, accel: str | None = None,
                 watchdog_base: float = WATCHDOG_BASE, watchdog_per_op: float = WATCHDOG_PER_OP,
                 agent_source=AGENT_SOURCE, zoo: str | bool | None = None,
                 modules: Sequence[ModuleSpec] = (), files: Mapping[str, bytes] | None = None,
                 cpus: int = 2, boot_attempts: int = BOOT_ATTEMPTS, coverage: bool | str = False):
        """zoo: a bug-zoo bug name to inject after every boot, or True to only carry the zoo's
        module (targets/zoo) for load_zoo(); modules: loaded after every boot, in order; files:
        guest path -> contents, executables for run_file(); coverage: load the kernel coverage
        probe (targets/coverage) after every boot and put each program's function hit counts
        in trace.extra["kcov"] (True, or the probe module's parameters, e.g. "mode=kprobe settle=0":
        targets/coverage/procfuzz_kcov.c)."""
        self.image = kernel if isinstance(kernel, KernelImage) else resolve(kernel)
        image_files = dict(files or {})
        if zoo:
            from targets.zoo.build import build_zoo
            image_files[ZOO_MODULE.lstrip("/")] = build_zoo(self.image).read_bytes()
        names = [spec.path.name for spec in modules]
        if len(set(names)) != len(names):
            raise ValueError(f"two modules with the same file name: {names}")
        image_files.update({spec.guest_path.lstrip("/"): spec.path.read_bytes() for spec in modules})
        self.coverage = "" if coverage is True else coverage or None
        if self.coverage and not re.fullmatch(r"[a-z_]{1,20}=[a-z0-9]{1,20}( [a-z_]{1,20}=[a-z0-9]{1,20}){0,3}",
                                              self.coverage):
            raise ValueError(f"coverage probe parameters {coverage!r}: name=value words")
        if self.coverage is not None:
            from targets.coverage.build import build_probe
            image_files[KCOV_MODULE.lstrip("/")] = build_probe(self.image).read_bytes()
        self.modules = tuple(modules)
        self.cpus = cpus                    # guest vCPUs: TCG runs one host thread per vCPU
        self.zoo_bug: str | None = None     # injected bug, injected again after every restart
        self._zoo_at_boot = zoo if isinstance(zoo, str) else None
        self.initrd = guest_image(agent_source, modules_dir=self.image.modules_dir, files=image_files)
        self.accel = accel or choose_accel(self.image.vmlinuz, self.initrd)
        self.watchdog_base, self.watchdog_per_op = watchdog_base, watchdog_per_op
        self.boot_attempts = boot_attempts
        self.vm: Vm | None = None
        self.restarts = 0
        self.host_faults = 0                # lost traces: the guest went away with no kernel report
        self.boot_failures = 0              # failed boot attempts, retried or not
        self._console_seen = 0              # console offset up to which reports were looked for
        self.boot_seconds: list[float] = []
        self._cpu_of_stopped = 0.0

    @property
    def label(self) -> str:
        return kernel_label(self.image.label, self.zoo_bug or self._zoo_at_boot, self.modules)

    @property
    def qemu_pid(self) -> int | None:
        """The pid of the running guest's QEMU (in its own session), None when there is none."""
        return self.vm.proc.pid if self.vm and self.vm.proc else None

    def start(self) -> None:
        vm = self._boot()
        if vm.release != self.image.release:
            vm.stop()
            raise RuntimeError(f"guest runs {vm.release}, expected {self.image.release}")
        self.vm = vm
        self.boot_seconds.append(vm.boot_seconds)
        loads = [(spec.path.name, f"{spec.guest_path} {spec.params}".strip()) for spec in self.modules]
        bug = self.zoo_bug or self._zoo_at_boot
        if bug:
            loads.append((f"zoo bug {bug}", _zoo_load(bug)))
        for name, request in loads:
            vm.channel.send("C", f"load {request}".encode())
            frame = vm.channel.recv(time.monotonic() + self.watchdog_base)
            if frame.kind != "R" or frame.payload != b"ok":
                self.close()
                raise ModuleLoadError(f"loading {name} into {self.label}: {frame.payload[:200].decode('ascii', 'replace')}")
        self.zoo_bug = bug
        if self.coverage is not None:
            self._enable_coverage(vm)
        self._console_seen = vm.console_size()

    def _enable_coverage(self, vm: Vm) -> None:
        """Loads the probe (kprobe mode arms each probe on its own: seconds under TCG), then
        `C kcov`: the agent opens its counters; from now on every R payload ends with the
        program's "K" line."""
        vm.channel.send("C", f"load {KCOV_MODULE} {self.coverage}".strip().encode())
        frame = vm.channel.recv(time.monotonic() + KCOV_LOAD_TIMEOUT)
        if frame.kind == "R" and frame.payload == b"ok":
            vm.channel.send("C", b"kcov")
            frame = vm.channel.recv(time.monotonic() + self.watchdog_base)
        words = frame.payload.decode("ascii", "replace").split("\n")
        if frame.kind != "R" or words[0] != "ok":
            self.close()
            raise ModuleLoadError(f"coverage probe on {self.label}: {frame.payload[:200].decode('ascii', 'replace')}")
        self.coverage_missing = tuple(word for word in words[1:] if word)

    def _boot(self) -> Vm:
        """A booted Vm. A failed boot is tried again (the host may have been short of memory or
        time for a moment); boot_attempts failures in a row raise BootFailed."""
        failures = 0
        while True:
            vm = Vm(self.image.vmlinuz, self.initrd, accel=self.accel, cpus=self.cpus)
            try:
                vm.start(BOOT_TIMEOUT)
                return vm
            except VmError as err:
                self.boot_failures += 1
                failures += 1
                if failures >= self.boot_attempts:
                    raise BootFailed(f"{failures} boots in a row failed, the last: {err.reason}",
                                     err.tail) from None

    def close(self) -> None:
        if self.vm:
            self.vm.stop()
            self._cpu_of_stopped += self.vm.cpu_seconds()
            self.vm = None

    def cpu_seconds(self) -> float:
        """Host CPU seconds of every guest this target ran, the running one included."""
        return self._cpu_of_stopped + (self.vm.cpu_seconds() if self.vm else 0.0)

    def __enter__(self) -> "QemuTarget":
        if not self.vm:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def restart(self) -> None:
        self.close()
        self.restarts += 1
        self.start()

    # ---- requests ---------------------------------------------------------------------------

    def ping(self) -> float:
        """Round trip of an H frame, in seconds."""
        trace, seconds = self._exchange("H", b"", 0)
        if trace.outcome != "ok":
            raise RuntimeError(f"ping failed: {trace.outcome}: {trace.title}")
        return seconds

    def run(self, program: Program) -> Trace:
        """One program; with `measure_leaks` set, the agent also settles and reports the slab
        counts after teardown (an L frame: ~0.1 s more under TCG)."""
        kind = "L" if self.measure_leaks else "P"
        trace, _ = self._exchange(kind, program.to_text().encode(), len(program))
        return trace

    def control(self, what: str) -> Trace:
        """Test hook: ``panic`` crashes the guest kernel, ``hang`` silences the agent."""
        if what not in ("panic", "hang"):
            raise ValueError(f"unknown control {what!r}")
        trace, _ = self._exchange("C", what.encode(), 0)
        return trace

    def load_zoo(self, bug: str) -> str:
        """Inject a bug-zoo bug (needs QemuTarget(zoo=True)): "ok" or the errno name of
        finit_module (EEXIST: a bug is already loaded). Kept across restarts once "ok"."""
        trace, _ = self._exchange("C", f"load {_zoo_load(bug)}".encode(), 0)
        if trace.outcome != "ok":
            raise RuntimeError(f"zoo {bug}: {trace.outcome}: {trace.title}")
        if trace.results == ("ok",):
            self.zoo_bug = bug
        return trace.results[0]

    def run_file(self, guest_path: str, timeout: float = 60.0) -> FileRun:
        """Run an executable of the image (see `files`) as root in the guest's root namespaces.
        A guest lost to the host (no kernel report) raises: it says nothing of the executable."""
        seconds = max(1, math.ceil(timeout))
        trace, _ = self._exchange("C", f"run {seconds} /{guest_path.lstrip('/')}".encode(), 0,
                                  timeout=seconds + self.watchdog_base)
        if trace.outcome in ("crash", "hang"):
            return FileRun("crash" if trace.outcome == "crash" else "timeout", trace.title)
        if trace.outcome != "ok":
            raise RuntimeError(f"run {guest_path}: {trace.outcome}: {trace.title}")
        status, _, output = trace.results[0].partition("\n")
        return FileRun(status, output)

    def _exchange(self, kind: str, payload: bytes, n_ops: int,
                  timeout: float | None = None) -> tuple[Trace, float]:
        if not self.vm:
            self.start()
        vm = self.vm
        console_from = vm.console_size()
        # A failure is explained by any report since the last look, not only since this request:
        # a kernel that panics between two requests must not pass for a host fault.
        report_from = self._console_seen
        timeout = timeout or self.watchdog_base + self.watchdog_per_op * n_ops
        started = time.monotonic()
        try:
            vm.channel.send(kind, payload)
            frame = vm.channel.recv(started + timeout)
        except ChannelTimeout:
            # The title is a signature: no timeout in it (it depends on the program's length).
            return self._failed("hang", "no reply from the agent before the watchdog", report_from), 0.0
        except ChannelClosed:
            return self._failed("lost", _lost_title(vm.wait_exit(EXIT_GRACE)), report_from), 0.0
        except ProtocolError as err:
            return self._failed("error", f"protocol error: {err}", report_from), 0.0
        seconds = time.monotonic() - started
        try:
            trace = self._reply(frame, kind, n_ops, seconds)
        except ProtocolError as err:
            return self._failed("error", f"protocol error: {err}", report_from), 0.0
        if frame.kind == "E" and frame.payload.startswith(UNKILLABLE_SANDBOX):
            # SIGKILL did not end the sandbox: a task is stuck in the kernel (e.g. waiting on a
            # lock nobody releases), a hang, and the guest is unfit for the next program.
            return self._failed("hang", "a sandbox task did not die after SIGKILL", report_from), 0.0
        # A WARNING (or a report the guest survived) must not pass unnoticed: the kernel is
        # tainted from here on, so the program gets the blame and the VM a restart.
        seen = vm.console_size()
        if seen > console_from and (report := find_report(vm.read_console(console_from))):
            self.restart()
            return Trace(trace.results, "crash", report.title, self.label, trace.guest_us,
                         {**trace.extra, "console": report.excerpt}), seconds
        self._console_seen = seen
        return trace, seconds

    def _reply(self, frame, kind: str, n_ops: int, seconds: float) -> Trace:
        if frame.kind == "E":
            return Trace((), "error", f"agent error: {text(frame.payload, 'error')[:200]}", self.label)
        if kind == "H" and frame.kind == "H":
            parse_hello(frame.payload)
            return Trace((), kernel=self.label)
        if kind in ("P", "L") and frame.kind == "R":
            payload, coverage = (split_kcov(frame.payload) if self.coverage is not None
                                 else (frame.payload, None))
            ops_us, total_us, results, slab = parse_results(payload, n_ops)
            extra = {"total_us": total_us, "wall_us": int(seconds * 1e6), "slab": slab}
            if coverage is not None:
                extra["kcov"] = parse_kcov(coverage)
            return Trace(results, kernel=self.label, guest_us=ops_us, extra=extra)
        if kind == "C" and frame.kind == "R":      # load: "ok" or an errno name; run: status + output
            return Trace((frame.payload.decode("utf-8", "replace"),), kernel=self.label)
        raise ProtocolError(f"unexpected {frame.kind!r} frame in reply to {kind!r}")

    def _failed(self, outcome: str, fallback_title: str, console_from: int) -> Trace:
        """Build the trace of a failed request from the console, then restart the VM: a stream
        out of step with us (protocol error) is not worth resynchronising either.

        Silence while the kernel stays up is a hang (titled by a stall report if the console has
        one). A guest that went away (QEMU exited) is a crash if the console has a kernel report,
        else lost: nothing says the kernel failed. Garbage next to a kernel report is a crash."""
        vm = self.vm
        if outcome == "hang" and (code := vm.wait_exit(0.5)) is not None:
            outcome, fallback_title = "lost", _lost_title(code)
        console = vm.read_console(console_from)
        report = find_report(console)
        if report and outcome in ("error", "lost"):
            outcome = "crash"
        title, excerpt = (report.title, report.excerpt) if report else (fallback_title, console[-8000:])
        extra = {"console": excerpt, "qemu_log": vm.qemu_log()}
        if outcome == "lost":
            self.host_faults += 1
        self.restart()
        return Trace((), outcome, title, self.label, extra=extra)


# The agent's error when the sandbox's init outlives SIGKILL (targets/agent/agent.c, teardown).
UNKILLABLE_SANDBOX = b"teardown: sandbox init"


def _lost_title(code: int | None) -> str:
    # No pid, time or console text in it: it is a signature, like every title.
    if code is None:
        return "agent channel closed while QEMU runs, no kernel report"
    return f"QEMU exited ({exit_text(code)}) with no kernel report"


def kernel_label(image_label: str, zoo_bug: str | None, modules: Sequence[ModuleSpec]) -> str:
    """Findings name the kernel they ran on; a kernel with an injected bug or extra modules is
    not the stock one, and triage must keep the two apart."""
    extras = ([f"zoo:{zoo_bug}"] if zoo_bug else []) + [spec.path.name for spec in modules]
    return " +".join([image_label, *extras])


def stock_label(label: str) -> str:
    """The stock kernel of a kernel_label."""
    return label.split(" +", 1)[0]


def injected_zoo_bug(label: str) -> str | None:
    """The zoo bug a kernel_label names, if any."""
    return next((extra[4:] for extra in label.split(" +")[1:] if extra.startswith("zoo:")), None)


def _zoo_load(bug: str) -> str:
    if not re.fullmatch(r"[a-z0-9_]{1,40}", bug):
        raise ValueError(f"bad zoo bug name {bug!r}")
    return f"{ZOO_MODULE} bug={bug}"
