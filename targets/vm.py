"""One QEMU guest: start, wait for the agent, talk to it, stop.

The host listens on two unix sockets before QEMU starts and QEMU connects to both as a client
while it sets up its devices, so nothing the guest writes can be lost to a late connection:
- the agent channel, a virtio-serial port (/dev/vport0p1 in the guest);
- QMP, driven through ``qemu.qmp`` on a private event loop, for an orderly ``quit``.
The console (ttyS0) goes to a file that the caller scans for kernel failures.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from qemu.qmp import QMPClient, QMPError

from targets.cache import cache_root
from targets.protocol import Channel, ChannelClosed, ChannelTimeout, ProtocolError, parse_hello

QEMU = "qemu-system-x86_64"
# oops=panic and panic=-1 with -no-reboot turn every oops into a QEMU exit, which the host sees
# at once. loglevel=5 undoes quiet's filter for KERN_WARNING so WARN() splats reach the console.
# slab_nomerge keeps proc's caches separate in /proc/slabinfo. no_timer_check: under TCG on a
# loaded host the IO-APIC timer check can fail and panic the boot ("IO-APIC + timer doesn't work").
# init_on_alloc=0: Debian's kernels zero every allocation (INIT_ON_ALLOC_DEFAULT_ON), a hardening
# that nothing of /proc depends on and that costs emulated memsets on every fork and namespace
# (bench target: about 15% more programs/s without).
CMDLINE = "console=ttyS0 quiet loglevel=5 panic=-1 oops=panic slab_nomerge no_timer_check init_on_alloc=0"
# TCG: no 5-level paging (la57), which `max` offers and Debian's kernels use: every emulated
# TLB miss would walk five levels, and a program switches address spaces often (bench target:
# about 10% more programs/s without).
ACCEL_ARGS = {"kvm": ["-accel", "kvm", "-cpu", "host"],
              "tcg": ["-accel", "tcg,thread=multi", "-cpu", "max,la57=off"]}
KVM_PROBE_SECONDS = 6.0
CONSOLE_READ_LIMIT = 1 << 20
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")     # /proc/PID/stat counts CPU time in these
PR_SET_PDEATHSIG = 1


class VmError(RuntimeError):
    """The guest could not be brought up (or talked to during start). ``reason`` is one line;
    ``tail`` has the last lines of QEMU's output and of the console, for the operator."""

    def __init__(self, reason: str, tail: str = ""):
        super().__init__(reason + tail)
        self.reason, self.tail = reason, tail


class Qmp:
    """Synchronous use of QMPClient: each call runs the private loop until it completes."""

    def __init__(self, sock: socket.socket, timeout: float = 10.0):
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient("procfuzz")
        self._timeout = timeout
        try:
            self._run(self._client.connect(sock))
        except BaseException:
            self._loop.close()
            raise

    def _run(self, coro):
        return self._loop.run_until_complete(asyncio.wait_for(coro, self._timeout))

    def execute(self, command: str, arguments: dict | None = None):
        return self._run(self._client.execute(command, arguments))

    def close(self) -> None:
        try:
            self._run(self._client.disconnect())
        except Exception:   # the peer may be gone already; closing is best effort by design
            pass
        self._loop.close()


class Vm:
    def __init__(self, vmlinuz: Path, initrd: Path, *, accel: str = "tcg", memory_mb: int = 1024,
                 cpus: int = 2, cmdline: str = CMDLINE):
        self.vmlinuz, self.initrd, self.accel = Path(vmlinuz), Path(initrd), accel
        self.memory_mb, self.cpus, self.cmdline = memory_mb, cpus, cmdline
        # unix socket paths are limited to 108 bytes: keep the directory short.
        self.workdir = Path(tempfile.mkdtemp(prefix="pfz-vm-", dir="/tmp"))
        self.console_path = self.workdir / "console.log"
        self.proc: subprocess.Popen | None = None
        self.channel: Channel | None = None
        self.qmp: Qmp | None = None
        self.release = ""          # the guest's uname -r, from the agent's hello
        self.boot_seconds = 0.0
        self._cpu_seconds = 0.0

    def argv(self) -> list[str]:
        return [QEMU, *ACCEL_ARGS[self.accel], "-m", str(self.memory_mb), "-smp", str(self.cpus),
                "-nographic", "-no-reboot", "-nodefaults", "-nic", "none",
                "-kernel", str(self.vmlinuz), "-initrd", str(self.initrd), "-append", self.cmdline,
                "-chardev", f"file,id=console,path={self.console_path}",
                "-device", "isa-serial,chardev=console",
                "-chardev", f"socket,id=agent,path={self.workdir / 'agent.sock'}",
                # virtio-serial, not a second UART: a UART moves a byte per emulated I/O
                # access (about 3 us a byte under TCG); virtio moves a reply in one go.
                "-device", "virtio-serial-pci,id=vser",
                "-device", "virtserialport,bus=vser.0,nr=1,chardev=agent,name=procfuzz",
                "-chardev", f"socket,id=qmp,path={self.workdir / 'qmp.sock'}",
                "-mon", "chardev=qmp,mode=control"]

    def start(self, timeout: float) -> str:
        """Boot and wait for the agent's hello; returns the guest's kernel release.
        On failure QEMU is stopped and VmError carries the tails of QEMU's output and the console."""
        started = time.monotonic()
        try:
            self.release = self._boot(started + timeout, timeout)
        except VmError:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - started
        return self.release

    def _boot(self, deadline: float, timeout: float) -> str:
        listeners = {name: _listen(self.workdir / f"{name}.sock") for name in ("agent", "qmp")}
        try:
            with open(self.workdir / "qemu.log", "wb") as log:
                # Its own session: a terminal's Ctrl-C or SIGHUP goes to procfuzz's group only,
                # and procfuzz alone decides when the guest stops (stop(), or its own death).
                self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True,
                                             preexec_fn=_die_with_parent)
            self.channel = Channel(self._accept(listeners["agent"], deadline))
            self.qmp = Qmp(self._accept(listeners["qmp"], deadline))
            frame = self.channel.recv(deadline)
            if frame.kind != "H":
                raise VmError(f"expected the agent's hello, got a {frame.kind!r} frame: "
                              f"{frame.payload[:200]!r}", self._tail())
            return parse_hello(frame.payload)
        except ChannelTimeout:
            raise VmError(f"no hello from the agent within {timeout:.0f} s", self._tail()) from None
        except (ChannelClosed, ProtocolError, OSError, QMPError) as err:
            raise VmError(self._why(f"guest start failed: {err}"), self._tail()) from None
        finally:
            for sock in listeners.values():
                sock.close()

    def _accept(self, listener: socket.socket, deadline: float) -> socket.socket:
        # QEMU connects while it initialises; poll so a QEMU that dies first is noticed at once.
        while time.monotonic() < deadline:
            listener.settimeout(0.05)
            try:
                conn, _ = listener.accept()
                conn.settimeout(None)
                return conn
            except TimeoutError:
                if self.proc.poll() is not None:
                    raise VmError(self._why("QEMU exited"), self._tail()) from None
        raise VmError("QEMU did not connect to its sockets in time", self._tail())

    def _why(self, problem: str) -> str:
        """The one-line reason of a failed start: a QEMU that exited is the reason, with its own
        last line (what the sockets saw of it is only the echo); else ``problem``."""
        code = self.wait_exit(1.0) if self.proc else None
        if code is None:
            return problem
        last = self.qemu_log().rpartition("\n")[2]
        return f"QEMU exited ({exit_text(code)})" + (f": {last}" if last else "")

    def _tail(self) -> str:
        console = self.read_console(0)[-2000:].strip()
        return "".join(f"\n--- {name} ---\n{text}" for name, text in
                       (("qemu", self.qemu_log()), ("console", console)) if text)

    def qemu_log(self) -> str:
        """The end of QEMU's own output: why it stopped, when the host stopped it."""
        try:
            return (self.workdir / "qemu.log").read_text(errors="replace")[-2000:].strip()
        except FileNotFoundError:
            return ""

    def console_size(self) -> int:
        try:
            return self.console_path.stat().st_size
        except FileNotFoundError:
            return 0

    def read_console(self, offset: int) -> str:
        """Console text from ``offset`` on (at most the last CONSOLE_READ_LIMIT bytes of it)."""
        try:
            with open(self.console_path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(offset, size - CONSOLE_READ_LIMIT))
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def cpu_seconds(self) -> float:
        """User and system CPU seconds QEMU has used (its last reading once it is gone)."""
        if self.proc and self.proc.poll() is None:
            try:
                fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
                self._cpu_seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            except (OSError, ValueError, IndexError):
                pass            # gone between poll and read: keep the last reading
        return self._cpu_seconds

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Ask QEMU to quit over QMP; kill it if that does not work promptly. Idempotent."""
        self.cpu_seconds()
        if self.qmp:
            try:
                if self.proc.poll() is None:
                    self.qmp.execute("quit")
            except Exception:  # QEMU may be dead or wedged; the kill below handles both
                pass
            self.qmp.close()
            self.qmp = None
        if self.proc and self.wait_exit(5.0) is None:
            self.proc.kill()
            self.proc.wait()
        if self.channel:
            self.channel.close()
            self.channel = None
        shutil.rmtree(self.workdir, ignore_errors=True)


def exit_text(returncode: int) -> str:
    """A Popen returncode as people say it: ``status 0``, ``signal 9``."""
    return f"signal {-returncode}" if returncode < 0 else f"status {returncode}"


def _die_with_parent() -> None:
    # Runs in the child before exec: a host process killed outright must not leave a TCG guest
    # burning both cores. (The signal follows the thread that started QEMU: start VMs from a
    # thread that lives as long as they do.)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1)
    return sock


# ---- accelerator choice ---------------------------------------------------------------------

def choose_accel(vmlinuz: Path, initrd: Path) -> str:
    """kvm if a guest really boots with it here, else tcg. The verdict is cached per host kernel
    and QEMU version: /dev/kvm can exist and still abort or hang QEMU (see machine-facts)."""
    key = f"{platform.release()} {_qemu_version()}"
    verdict_file = cache_root() / "kvm-verdict.json"
    try:
        verdicts = json.loads(verdict_file.read_text())
    except (FileNotFoundError, ValueError):
        verdicts = {}
    if key not in verdicts:
        verdicts[key] = os.access("/dev/kvm", os.R_OK | os.W_OK) and _kvm_boots(vmlinuz, initrd)
        verdict_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = verdict_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(verdicts, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, verdict_file)
    return "kvm" if verdicts[key] else "tcg"


def _kvm_boots(vmlinuz: Path, initrd: Path) -> bool:
    vm = Vm(vmlinuz, initrd, accel="kvm")
    try:
        vm.start(KVM_PROBE_SECONDS)
        return True
    except VmError:
        return False
    finally:
        vm.stop()


def _qemu_version() -> str:
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0]
