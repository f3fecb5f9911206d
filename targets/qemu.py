"""The QEMU target: programs run by the guest agent on a real Debian kernel.

``QemuTarget.run(program) -> Trace`` has the same interface as the reference model's target.
Kernel failures become traces rather than exceptions: a crash (QEMU exited, or the console shows
an oops/BUG/WARNING/panic/stall report) or a hang (no reply before the watchdog) gives a trace
with outcome ``crash``/``hang``, a one-line title and the console excerpt in
``trace.extra["console"]``; the VM is then restarted so the next program runs on a clean kernel.
Only a VM that cannot be started at all raises (VmError).
"""

from __future__ import annotations

import time

from reference.program import Program
from reference.trace import Trace
from targets.console import find_report
from targets.initramfs import AGENT_SOURCE, guest_image
from targets.kernels import KernelImage, resolve
from targets.protocol import ChannelClosed, ChannelTimeout, ProtocolError, parse_hello, parse_results, text
from targets.vm import Vm, choose_accel

BOOT_TIMEOUT = 120.0        # TCG boots in ~5 s; generous for a loaded 2-core machine
WATCHDOG_BASE = 5.0         # sandbox set-up and teardown under TCG take tens of ms
WATCHDOG_PER_OP = 0.25
EXIT_GRACE = 10.0           # after the channel closes, time for QEMU to finish writing and exit


class QemuTarget:
    measure_leaks = False       # send L frames: slab counts after each program (leak oracle)

    def __init__(self, kernel: str | KernelImage | None = None, *, accel: str | None = None,
                 watchdog_base: float = WATCHDOG_BASE, watchdog_per_op: float = WATCHDOG_PER_OP,
                 agent_source=AGENT_SOURCE, zoo: bool = False):
        self.image = kernel if isinstance(kernel, KernelImage) else resolve(kernel)
        # zoo: the guest image carries the bug zoo's module (targets/zoo), loaded by load_zoo().
        zoo_ko = None
        if zoo:
            from targets.zoo.build import build_zoo
            zoo_ko = build_zoo(self.image)
        self.zoo_bug: str | None = None     # injected bug, injected again after every restart
        self.initrd = guest_image(agent_source, modules_dir=self.image.modules_dir, zoo=zoo_ko)
        self.accel = accel or choose_accel(self.image.vmlinuz, self.initrd)
        self.watchdog_base, self.watchdog_per_op = watchdog_base, watchdog_per_op
        self.vm: Vm | None = None
        self.restarts = 0
        self.boot_seconds: list[float] = []

    @property
    def label(self) -> str:
        return self.image.label

    def start(self) -> None:
        vm = Vm(self.image.vmlinuz, self.initrd, accel=self.accel)
        release = vm.start(BOOT_TIMEOUT)
        if release != self.image.release:
            vm.stop()
            raise RuntimeError(f"guest runs {release}, expected {self.image.release}")
        self.vm = vm
        self.boot_seconds.append(vm.boot_seconds)
        if self.zoo_bug:
            vm.channel.send("C", f"zoo {self.zoo_bug}".encode())
            frame = vm.channel.recv(time.monotonic() + self.watchdog_base)
            if frame.kind != "R" or frame.payload != b"ok":
                self.close()
                raise RuntimeError(f"re-injecting zoo bug {self.zoo_bug}: {frame.kind} {frame.payload[:200]!r}")

    def close(self) -> None:
        if self.vm:
            self.vm.stop()
            self.vm = None

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
        trace, _ = self._exchange("C", f"zoo {bug}".encode(), 0)
        if trace.outcome != "ok":
            raise RuntimeError(f"zoo {bug}: {trace.outcome}: {trace.title}")
        if trace.results == ("ok",):
            self.zoo_bug = bug
        return trace.results[0]

    def _exchange(self, kind: str, payload: bytes, n_ops: int) -> tuple[Trace, float]:
        if not self.vm:
            self.start()
        vm = self.vm
        console_from = vm.console_size()
        timeout = self.watchdog_base + self.watchdog_per_op * n_ops
        started = time.monotonic()
        try:
            vm.channel.send(kind, payload)
            frame = vm.channel.recv(started + timeout)
        except ChannelTimeout:
            return self._failed("hang", f"hang: no reply from the agent within {timeout:.1f} s", console_from), 0.0
        except ChannelClosed:
            code = vm.wait_exit(EXIT_GRACE)
            return self._failed("crash", f"QEMU exited (status {code}) with no kernel report", console_from), 0.0
        except ProtocolError as err:
            return self._failed("error", f"protocol error: {err}", console_from), 0.0
        seconds = time.monotonic() - started
        try:
            trace = self._reply(frame, kind, n_ops, seconds)
        except ProtocolError as err:
            return self._failed("error", f"protocol error: {err}", console_from), 0.0
        # A WARNING (or a report the guest survived) must not pass unnoticed: the kernel is
        # tainted from here on, so the program gets the blame and the VM a restart.
        if vm.console_size() > console_from and (report := find_report(vm.read_console(console_from))):
            self.restart()
            return Trace(trace.results, "crash", report.title, self.label, trace.guest_us,
                         {**trace.extra, "console": report.excerpt}), seconds
        return trace, seconds

    def _reply(self, frame, kind: str, n_ops: int, seconds: float) -> Trace:
        if frame.kind == "E":
            return Trace((), "error", f"agent error: {text(frame.payload, 'error')[:200]}", self.label)
        if kind == "H" and frame.kind == "H":
            parse_hello(frame.payload)
            return Trace((), kernel=self.label)
        if kind in ("P", "L") and frame.kind == "R":
            ops_us, total_us, results, slab = parse_results(frame.payload, n_ops)
            return Trace(results, kernel=self.label, guest_us=ops_us,
                         extra={"total_us": total_us, "wall_us": int(seconds * 1e6), "slab": slab})
        if kind == "C" and frame.kind == "R":      # zoo: one word, "ok" or an errno name
            return Trace((text(frame.payload, "zoo reply"),), kernel=self.label)
        raise ProtocolError(f"unexpected {frame.kind!r} frame in reply to {kind!r}")

    def _failed(self, outcome: str, fallback_title: str, console_from: int) -> Trace:
        """Build the trace of a failed request from the console, then restart the VM: a stream
        out of step with us (protocol error) is not worth resynchronising either.

        Silence while the kernel stays up is a hang (titled by a stall report if the console has
        one); silence because QEMU exited is a crash; so is garbage next to a kernel report."""
        vm = self.vm
        if outcome == "hang" and vm.wait_exit(0.5) is not None:
            outcome = "crash"
        console = vm.read_console(console_from)
        report = find_report(console)
        if report and outcome == "error":
            outcome = "crash"
        title, excerpt = (report.title, report.excerpt) if report else (fallback_title, console[-8000:])
        self.restart()
        return Trace((), outcome, title, self.label, extra={"console": excerpt})
