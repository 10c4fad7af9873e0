"""A real HTTP receiver for the notification tests: a thread-served ``http.server`` on a free 127.0.0.1 port.

It records every POST (path, headers, JSON body) and answers with the statuses it is told to, in
order (then 200), so retries and refusals can be driven.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.net import HOST, free_port, serving


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Receiver:
    url: str
    received: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answers still to give, in order; then 200

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The JSON bodies received (of one event kind)."""
        return [r.body for r in self.received if kind is None or r.body.get("event") == kind]

    def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.received


@contextmanager
def receiving() -> Iterator[Receiver]:
    port = free_port()
    receiver = Receiver(url=f"http://{HOST}:{port}/hooks/T0KEN-SECRET")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                receiver.received.append(Received(self.path, dict(self.headers.items()), json.loads(raw or b"null")))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:  # quiet
            return

    with serving(ThreadingHTTPServer((HOST, port), Handler)):
        yield receiver
