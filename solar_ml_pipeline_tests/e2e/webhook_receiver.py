"""A local HTTP server that stands in for an alert webhook (Slack, Teams, a pager) in tests."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class WebhookReceiver:
    """Records every POST; answers with the queued statuses first, then `default_status`.

    `delay_s` makes every answer late, to exercise the sender's timeout.
    """

    def __init__(self, statuses: list[int] | None = None, default_status: int = 200,
                 delay_s: float = 0.0) -> None:
        self.statuses = list(statuses or [])
        self.default_status = default_status
        self.delay_s = delay_s
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.requests.append({
                        "path": self.path,
                        "content_type": self.headers.get("Content-Type"),
                        "body": body,
                    })
                    status = receiver.statuses.pop(0) if receiver.statuses else receiver.default_status
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender gave up (timeout test)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/solar-ml"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def payloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(r["body"]) for r in self.requests]

    def wait_for(self, predicate, timeout_s: float) -> dict[str, Any] | None:
        """The first received payload matching predicate, waiting up to timeout_s."""
        deadline = time.monotonic() + timeout_s
        while True:
            for payload in self.payloads():
                if predicate(payload):
                    return payload
            if time.monotonic() > deadline:
                return None
            time.sleep(0.5)
