"""`procfuzz serve` and `procfuzz push`: the service's commands (they parse nothing, call
fuzz.serve and print)."""

from __future__ import annotations

from pathlib import Path

from fuzz.errors import EXIT_OK

from .commands import _say


def cmd_serve(args) -> int:
    from fuzz.serve.service import serve
    serve(Path(args.config) if args.config else None, Path(args.state), args.listen, args.token_file,
          args.open_target, args.model_for, _say)
    return EXIT_OK


def cmd_push(args) -> int:
    from fuzz.serve.client import push
    from fuzz.serve.service import read_token
    answer = push(args.url, Path(args.dir), read_token(args.token_file))
    print(f"{args.url}: upload {answer['upload']}: {answer['findings_added']} findings added "
          f"({answer['repeated']} it had already), "
          f"{answer['bugs']} bugs, {len(answer['queued_for_follow_up'])} queued for follow-up")
    return EXIT_OK
