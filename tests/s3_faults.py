"""A fault-injecting HTTP proxy on 127.0.0.1 between the code under test and the S3 server.

Transparent until a test sets ``proxy.plan``: then each request it matches gets a fault instead of being
forwarded, as an S3 client would see it from a sick endpoint: ``503 SlowDown`` (throttling), ``500
InternalError``, or a connection reset (RST, no response).
"""
from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ERRORS = {
    503: b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code><Message>Reduce your request rate."
         b"</Message></Error>",
    500: b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code><Message>We encountered an "
         b"internal error. Please try again.</Message></Error>",
}


@dataclass
class FaultPlan:
    """Which requests fail and how: each matching request after the first ``after`` fails with probability ``rate``
    (seeded), until ``limit`` faults were injected (None: forever)."""

    kinds: tuple = (503, 500, "reset")
    rate: float = 1.0
    methods: tuple = ("GET", "PUT", "POST", "HEAD", "DELETE")
    path_contains: str = ""
    limit: int | None = None
    after: int = 0
    seed: int = 0
    injected: dict = field(default_factory=dict)  # kind -> count

    def __post_init__(self):
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()

    def pick(self, method: str, path: str):
        if method not in self.methods or self.path_contains not in path:
            return None
        with self._lock:
            self.after -= 1
            if self.after >= 0:
                return None
            if self.limit is not None and sum(self.injected.values()) >= self.limit:
                return None
            if self._random.random() >= self.rate:
                return None
            kind = self._random.choice(self.kinds)
            self.injected[kind] = self.injected.get(kind, 0) + 1
            return kind


class FaultProxy:
    def __init__(self, upstream_port: int):
        self.plan: FaultPlan | None = None
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> tuple[bytes, bool]:
                """The body as received (chunk framing and trailers kept: S3 clients put checksums there)."""
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0)), False
                raw = []
                while True:
                    line = self.rfile.readline()
                    raw.append(line)
                    size = int(line.split(b";")[0], 16)
                    if not size:
                        break
                    raw.append(self.rfile.read(size + 2))
                while True:  # trailers, then the empty line
                    line = self.rfile.readline()
                    raw.append(line)
                    if line in (b"\r\n", b"\n", b""):
                        break
                return b"".join(raw), True

            def _handle(self):
                body, chunked = self._body()
                proxy.requests += 1
                fault = proxy.plan.pick(self.command, self.path) if proxy.plan else None
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                if fault is not None:
                    self.send_response(fault)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(ERRORS[fault])))
                    self.end_headers()
                    if self.command != "HEAD":  # a HEAD answer has no body: one would corrupt the next response
                        self.wfile.write(ERRORS[fault])
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                try:
                    upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for key, value in self.headers.items():
                        if key.lower() not in ("expect", "connection", "content-length"):
                            upstream.putheader(key, value)
                    if not chunked:
                        upstream.putheader("Content-Length", str(len(body)))
                    upstream.endheaders(body)
                    reply = upstream.getresponse()
                    data = reply.read()
                finally:
                    upstream.close()
                self.send_response(reply.status, reply.reason)
                for key, value in reply.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(key, value)
                length = reply.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
