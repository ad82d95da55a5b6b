"""The load generator's interleaved passes (benchmarks/serve_load.py compares the floor and the app with them)."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from reasonrec.serve.loadgen import interleaved


def test_interleaved_passes_alternate_the_paths_and_pool_each_ones_replies():
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.path)
            if self.path == "/slow":
                time.sleep(0.02)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        out = interleaved({"fast": f"{base}/fast", "slow": f"{base}/slow"}, [{"user_id": "u"}] * 30, 2, None, 3)
    finally:
        server.shutdown()
    assert [seen[i] for i in range(0, 60, 10)] == ["/fast", "/slow"] * 3  # pass by pass, in turn
    assert all(len(set(seen[i:i + 10])) == 1 for i in range(0, 60, 10))
    assert out["fast"]["requests"] == out["slow"]["requests"] == 30
    assert out["slow"]["p50_ms"] >= 20.0 and out["slow"]["shed"] == 0
