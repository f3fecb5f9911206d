"""`procfuzz serve` as one call: the manager and the HTTP server until SIGINT or SIGTERM, then
both stopped with everything recorded kept."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Callable

from fuzz.errors import ToolError
from fuzz.execute.kernels import TargetOpener
from fuzz.triage.follow_up import ModelFor

from .config import load_config
from .http import Service
from .manager import Manager, ManagerError


def parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ToolError(f"--listen {text!r}: use HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def read_token(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as err:
        raise ToolError(f"--token-file {path}: {err.strerror or err}") from None
    if len(token) < 16:
        raise ToolError(f"--token-file {path}: the token must be at least 16 characters")
    return token


def serve(config_path: Path | None, state: Path, listen: str, token_file: str | None,
          open_target: TargetOpener, model_for: ModelFor, announce: Callable[[str], None]) -> None:
    """Run the service until a signal asks it to stop."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config, address, token = load_config(config_path), parse_listen(listen), read_token(token_file)
    try:
        manager = Manager(config, state, open_target, model_for)
    except ManagerError as err:
        raise ToolError(str(err)) from None
    try:
        server = Service(address, manager, token)
    except (OSError, ValueError) as err:
        manager.stop()
        raise ToolError(f"cannot listen on {listen}: {err}") from None
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        manager.start()
        server.serve_in_thread()
        host, port = server.server_address[:2]
        announce(f"procfuzz serve: http://{host}:{port}/ (state {manager.state}, database {manager.db.where})")
        while not stop.wait(1.0):
            pass
        announce("procfuzz serve: stopping (workers finish their program)")
    finally:
        server.shutdown()
        server.server_close()
        manager.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
