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


def test_refine_bisects_between_the_best_rate_and_the_next_one_up(monkeypatch):
    from reasonrec.serve import loadgen

    def fake_sweep(url, bodies, rates, seconds):  # the app holds up to 260 req/s
        return [(rate, {"p99_ms": 50.0 if rate <= 260 else 150.0, "shed": 0, "req_per_s": rate}) for rate in rates]

    monkeypatch.setattr(loadgen, "sweep", fake_sweep)
    coarse = fake_sweep("", [], [100.0, 200.0, 400.0], 1.0)
    assert loadgen.sustainable(coarse) == 200.0
    fine = loadgen.refine("", [], coarse, 1.0, steps=3)
    assert [rate for rate, _ in fine] == [100.0, 200.0, 250, 275, 300, 400.0]  # 300 fails, 250 holds, 275 fails
    assert loadgen.sustainable(fine) == 250
    assert loadgen.refine("", [], fake_sweep("", [], [100.0, 105.0], 1.0), 1.0, steps=3)[-1][0] == 105.0  # none above
