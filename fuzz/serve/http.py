"""The service's HTTP server (stdlib ThreadingHTTPServer): a JSON API under /api/ and the HTML
pages (fuzz/serve/pages.py).

Reads are open.  Writes (POST: campaigns start/stop, import) need ``Authorization: Bearer
TOKEN`` when a token is configured, and one must be when the server listens beyond loopback.
Pages carry a Content-Security-Policy that lets them load this server's own script and style
and nothing else: finding data is untrusted (kernel console output above all).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from reference.program import ProgramError

from fuzz.record import store
from fuzz.scale.runtimes import is_loopback

from . import pages, records
from .manager import Manager
from .upload import Limits, UploadError
from .hub import MAX_POST_BYTES, HubError
from .workers import MAX_REPORT_BYTES, ReportError

log = logging.getLogger("procfuzz.serve.http")
CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'"
STATIC = {"/static/live.js": ("text/javascript", pages.LIVE_JS), "/static/style.css": ("text/css", pages.STYLE),
          "/static/icon.svg": ("image/svg+xml", pages.ICON), "/favicon.ico": ("image/svg+xml", pages.ICON)}
ARTIFACTS = {"program": store.program_path, "minimized": store.minimized_path, "reproducer.c": store.existing_repro_c}


class Service(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256        # the listen backlog: socketserver's 5 resets many workers' posts at once

    def __init__(self, address: tuple[str, int], manager: Manager, token: str | None, limits: Limits = Limits()):
        if not is_loopback(address[0]) and not token:
            raise ValueError(f"listening on {address[0]} needs a token for the write endpoints (--token-file)")
        self.manager, self.token, self.limits = manager, token, limits
        super().__init__(address, Handler)

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        thread.start()
        return thread


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


GET_ROUTES: list[tuple[re.Pattern, str]] = [(re.compile(pattern), name) for pattern, name in (
    (r"/", "dashboard"), (r"/bugs", "bug_list"), (r"/bugs/(\d+)", "bug_page"),
    (r"/api/status", "api_status"), (r"/api/kernels", "api_kernels"), (r"/api/campaigns", "api_campaigns"),
    (r"/api/stats", "api_stats"), (r"/api/follow-ups", "api_follow_ups"), (r"/api/bugs", "api_bugs"),
    (r"/api/bugs/(\d+)", "api_bug"), (r"/api/bugs/(\d+)/reproducer\.c", "api_bug_reproducer"),
    (r"/api/findings/(\d+)", "api_finding"), (r"/api/findings/(\d+)/([a-z.]+)", "api_artifact"),
    (r"/api/workers", "api_workers"), (r"/api/corpus/([^/]+)", "api_corpus"))]
POST_ROUTES: list[tuple[re.Pattern, str]] = [(re.compile(pattern), name) for pattern, name in (
    (r"/api/campaigns/([A-Za-z0-9._+-]+)/(start|stop)", "post_campaign"), (r"/api/import", "post_import"),
    (r"/api/workers/([^/]+)/stats", "post_worker_stats"), (r"/api/corpus/([^/]+)", "post_corpus"))]


class Handler(BaseHTTPRequestHandler):
    server: Service
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):      # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self):                          # noqa: N802 - http.server's name
        self._dispatch(GET_ROUTES)

    def do_POST(self):                         # noqa: N802
        self._dispatch(POST_ROUTES)

    def _dispatch(self, routes) -> None:
        url = urlsplit(self.path)
        self.query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        try:
            if self.command == "GET" and url.path in STATIC:
                kind, text = STATIC[url.path]
                return self._send(200, text.encode(), f"{kind}; charset=utf-8")
            for pattern, name in routes:
                match = pattern.fullmatch(url.path)
                if match:
                    return getattr(self, name)(*match.groups())
            raise HttpError(404, f"no such page: {url.path}")
        except (HttpError, UploadError) as err:
            self.close_connection = True            # the body may be unread
            self._json(err.status, {"error": str(err)})
        except ValueError as err:                   # a malformed number in the query
            self.close_connection = True
            self._json(400, {"error": str(err)})
        except Exception:  # noqa: BLE001 - logged; the client gets a 500, the service goes on
            log.exception("%s %s", self.command, self.path)
            self.close_connection = True
            self._json(500, {"error": "internal error (see the service's log)"})

    # ---- answers ----------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, kind: str, extra: dict | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Type": kind, "Content-Length": str(len(body)), "Content-Security-Policy": CSP,
                   "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", **(extra or {})}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc) -> None:
        self._send(status, json.dumps(doc, indent=1, sort_keys=True, default=str).encode(), "application/json")

    def _html(self, text: str) -> None:
        self._send(200, text.encode(), "text/html; charset=utf-8")

    # ---- pages ------------------------------------------------------------------------------------

    def dashboard(self):
        m = self.server.manager
        self._html(pages.dashboard(m.status(), records.stat_points(m.db, _since(self.query, 6 * 3600)),
                                   records.bugs(m.db), records.follow_ups(m.db), m.remote.rows()))

    def bug_list(self):
        filters = {key: value for key, value in self.query.items() if key in ("status", "cls", "kernel", "q") and value}
        self._html(pages.bug_list(self._bugs(filters), filters))

    def bug_page(self, bug_id):
        bug = self._bug(bug_id)
        directory = Path(bug["artifacts"])
        try:
            finding = store.load(directory)
            minimized = store.read_minimized(directory)
        except ProgramError:
            finding = minimized = None
        self._html(pages.bug_page(bug, finding, minimized.to_text() if minimized else None,
                                  store.existing_repro_c(directory) is not None))

    # ---- the JSON API -----------------------------------------------------------------------------

    def api_status(self):
        self._json(200, self.server.manager.status())

    def api_kernels(self):
        self._json(200, self.server.manager.status()["kernels"])

    def api_campaigns(self):
        self._json(200, records.campaigns(self.server.manager.db, int(self.query.get("limit", 50))))

    def api_workers(self):
        self._json(200, self.server.manager.remote.rows())

    def api_corpus(self, name):
        try:
            self._json(200, self.server.manager.hub.since(name, int(self.query.get("since", 0))))
        except HubError as err:
            raise HttpError(400, str(err)) from None

    def api_stats(self):
        self._json(200, records.stat_points(self.server.manager.db, _since(self.query, 24 * 3600)))

    def api_follow_ups(self):
        self._json(200, records.follow_ups(self.server.manager.db))

    def api_bugs(self):
        self._json(200, self._bugs(self.query))

    def api_bug(self, bug_id):
        self._json(200, self._bug(bug_id))

    def api_bug_reproducer(self, bug_id):
        path = store.existing_repro_c(Path(self._bug(bug_id)["artifacts"]))
        if path is None:
            raise HttpError(404, "no C reproducer yet: the follow-up exports one")
        self._send(200, path.read_bytes(), "text/x-csrc; charset=utf-8",
                   {"Content-Disposition": f'attachment; filename="procfuzz-bug-{int(bug_id)}.c"'})

    def api_finding(self, finding_id):
        row = self._finding(finding_id)
        try:
            finding = store.load(Path(row["directory"]))
        except ProgramError as err:
            raise HttpError(410, f"the finding's directory is unreadable: {err}") from None
        artifacts = {name: f"/api/findings/{row['id']}/{name}" for name, locate in ARTIFACTS.items()
                     if (path := locate(Path(row["directory"]))) is not None and path.is_file()}
        self._json(200, {**row, "program": finding.program.to_text(), "signature": finding.signature,
                         "divergence": finding.divergence.to_json(), "model": finding.expected.to_json(),
                         "kernel_trace": finding.actual.to_json(), "console": finding.console,
                         "reruns": list(finding.reruns), "artifacts": artifacts})

    def api_artifact(self, finding_id, name):
        locate = ARTIFACTS.get(name)
        if locate is None:
            raise HttpError(404, f"no artifact {name!r}: one of {', '.join(ARTIFACTS)}")
        path = locate(Path(self._finding(finding_id)["directory"]))
        if path is None or not path.is_file():
            raise HttpError(404, f"this finding has no {name} yet")
        self._send(200, path.read_bytes(), "text/plain; charset=utf-8")

    # ---- writes -----------------------------------------------------------------------------------

    def _authorised(self) -> None:
        """The token when one is set; and never a browser's request from another site's page
        (without a token on loopback, a page elsewhere could otherwise post to us)."""
        origin = self.headers.get("Origin")
        if origin and urlsplit(origin).netloc != self.headers.get("Host", ""):
            raise HttpError(403, f"cross-site request from {origin} refused")
        token = self.server.token
        given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if token and not hmac.compare_digest(given.encode(), token.encode()):
            raise HttpError(401, "this endpoint needs Authorization: Bearer <token>")

    def post_campaign(self, name, action):
        self._authorised()
        if not self.server.manager.set_campaign(name, action == "start"):
            raise HttpError(404, f"no kernel {name!r} in the configuration")
        self._json(200, {"kernel": name, "enabled": action == "start"})

    def post_import(self):
        self._authorised()
        data = self._body(self.server.limits.upload_bytes)
        self._json(200, self.server.manager.import_upload(data, self.server.limits))

    def post_worker_stats(self, name):
        self._authorised()
        try:
            self._json(200, self.server.manager.remote.report(name, self._body(MAX_REPORT_BYTES)))
        except ReportError as err:
            raise HttpError(400, str(err)) from None

    def post_corpus(self, name):
        self._authorised()
        try:
            self._json(200, self.server.manager.hub.add(name, self._body(MAX_POST_BYTES)))
        except HubError as err:
            raise HttpError(400, str(err)) from None

    def _body(self, limit: int) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise HttpError(411, "a request body needs a Content-Length")
        if int(length) > limit:
            raise HttpError(413, f"a body of {length} bytes exceeds the limit of {limit}")
        return self.rfile.read(int(length))

    # ---- lookups ----------------------------------------------------------------------------------

    def _bugs(self, filters: dict) -> list[dict]:
        status = filters.get("status")
        if status and status not in records.BUG_STATUSES:
            raise HttpError(400, f"status must be one of {', '.join(records.BUG_STATUSES)}")
        return records.bugs(self.server.manager.db, status, filters.get("cls"), filters.get("kernel"), filters.get("q"))

    def _bug(self, bug_id) -> dict:
        bug = records.bug(self.server.manager.db, int(bug_id))
        if bug is None:
            raise HttpError(404, f"no bug {bug_id}")
        return bug

    def _finding(self, finding_id) -> dict:
        row = records.finding(self.server.manager.db, int(finding_id))
        if row is None:
            raise HttpError(404, f"no finding {finding_id}")
        return row


def _since(query: dict, default_window: int) -> int:
    try:
        return int(query.get("since", time.time() - default_window))
    except ValueError:
        raise HttpError(400, "since must be seconds since the epoch") from None
