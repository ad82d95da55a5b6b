"""Bounded load on the Serve app over loopback: req/s, p50 and p99 for tools-only requests and VLM-routed ones.

    python benchmarks/serve_load.py --bundle demo_output/bundle --data demo_output/data [--requests 1000]
                                    [--concurrency 8] [--rate 100] [--plan 0.3,0.7,0.1,tool]
                                    [--sweep 50,100,200,400 --vlm-sweep 5,10,20,40]

Starts on 127.0.0.1 first a no-op app of the same shape (the floor: what Serve itself costs here), then the
app (`reasonrec serve`'s code), and sends to each a fixed number of requests at a fixed
concurrency (optionally paced to ``--rate`` req/s) for two kinds of users of the test split: those the fitted
planner answers with the tools (route low) and those it sends to the VLM. Latency is measured at the client.
``--sweep`` / ``--vlm-sweep`` then offer each path a series of open-loop rates and report the highest one whose p99
stays under 100 ms with nothing shed (a 503 from ``ServeConfig.ingress_max_queued``).
"""
from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import socket
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(url: str, bodies: list[dict], concurrency: int, rate: float | None, open_loop: bool = False) -> dict:
    """Latencies of POSTing every body (one keep-alive connection per client thread: a lean client leaves the
    cores to the server). ``open_loop`` (with ``rate``): each latency counts from the request's scheduled time, so
    a server that falls behind is charged for the wait too. 503s (shed load) are counted, not timed."""
    address = urllib.parse.urlsplit(url)
    local = threading.local()
    payloads = [json.dumps(b).encode() for b in bodies]
    start = time.perf_counter()

    def one(i: int) -> tuple[int, float]:
        due = start + i / rate if rate else None
        if due:  # pace request i to start at i / rate seconds
            time.sleep(max(0.0, due - time.perf_counter()))
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
        t = due if open_loop and due else time.perf_counter()
        local.connection.request("POST", address.path, payloads[i], {"Content-Type": "application/json"})
        reply = local.connection.getresponse()
        body = reply.read()
        if reply.status not in (200, 503):
            raise RuntimeError(f"HTTP {reply.status}: {body[:300]!r}")
        return reply.status, 1000 * (time.perf_counter() - t)

    with ThreadPoolExecutor(concurrency) as pool:
        replies = list(pool.map(one, range(len(bodies))))
    seconds = time.perf_counter() - start
    latencies = np.array([ms for status, ms in replies if status == 200] or [np.nan])
    return {"requests": len(bodies), "req_per_s": len(bodies) / seconds, "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)), "shed": sum(status == 503 for status, _ in replies)}


def sweep(url: str, bodies: list[dict], rates: list[float], seconds: float) -> list[tuple[float, dict]]:
    """Open-loop load at each rate for ``seconds``: enough client threads for a second's worth of requests in
    flight at 250 ms each, so the client is not what limits the rate."""
    out = []
    for rate in rates:
        pool = _repeat(bodies, max(20, int(rate * seconds)))
        out.append((rate, load(url, pool, max(8, int(rate / 4)), rate, open_loop=True)))
    return out


def sustainable(results: list[tuple[float, dict]], p99_ms: float = 100.0) -> float | None:
    """The highest rate whose p99 stays under ``p99_ms`` with nothing shed (and every lower rate too)."""
    best = None
    for rate, r in sorted(results, key=lambda x: x[0]):
        if r["p99_ms"] >= p99_ms or r["shed"] or r["req_per_s"] < 0.9 * rate:
            break
        best = rate
    return best


def floor_app(batch_size: int, wait_s: float):
    """The app's shape with no work: a FastAPI ingress calling a batching deployment through a handle. Its
    latency is what Serve itself costs on this machine, the floor under any app of this shape."""
    from fastapi import FastAPI
    from fastapi.responses import Response
    from ray import serve

    api = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=2 * batch_size)
    class Echo:
        @serve.batch(max_batch_size=batch_size, batch_wait_timeout_s=wait_s)
        async def recommend(self, requests: list[dict]) -> list[dict]:
            return requests

    @serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
    @serve.ingress(api)
    class Ingress:
        def __init__(self, echo):
            self.echo = echo

        @api.post("/v1/recommend")
        async def recommend(self, body: dict) -> Response:
            return Response(json.dumps(await self.echo.recommend.remote(body)), media_type="application/json")

    return Ingress.bind(Echo.bind())


def main() -> None:
    from reasonrec.batch.config import ScoreConfig
    from reasonrec.batch.context import Scoring
    from reasonrec.bundle import Bundle
    from reasonrec.data.prepared import PreparedData
    from reasonrec.horizon import EvidenceHorizon
    from reasonrec.serve.api import ServeConfig, high_throughput_env
    from reasonrec.train.planner import copy_with_plan
    from reasonrec.vlm.deliberator import DeliberatorConfig, local_device

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--vlm-requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=100.0, help="paced arrivals, req/s (0: as fast as possible)")
    parser.add_argument("--backend", default="auto", choices=("auto", "transformers", "vllm"))
    parser.add_argument("--replicas", type=int, default=1,
                        help="fixed replicas per deployment (0: ServeConfig's autoscaling); 1 fits 2 cores")
    parser.add_argument("--batch-wait", type=float, help="tool_batch_wait_s (default: ServeConfig's)")
    parser.add_argument("--plan", help="tau_low,tau_high,kappa,low: serve a copy of the bundle with this plan")
    parser.add_argument("--sweep", default="", help="tools-path rates to sweep, req/s (e.g. 50,100,200,400)")
    parser.add_argument("--vlm-sweep", default="", help="VLM-path rates to sweep, req/s (e.g. 5,10,20,40)")
    parser.add_argument("--sweep-seconds", type=float, default=10.0)
    parser.add_argument("--default-proxy", action="store_true",
                        help="Serve's Python proxy instead of the high-throughput mode (HAProxy ingress)")
    args = parser.parse_args()
    deliberator = DeliberatorConfig(backend=args.backend, device=local_device())
    config = ServeConfig(score=ScoreConfig(deliberator=deliberator), port=free_port(),
                         high_throughput=not args.default_proxy)
    # Before Ray Serve is imported (it reads its mode at import) and Ray starts (its processes inherit it); no 30 s
    # drain of the ingress at the end: nothing balances here.
    os.environ.update(high_throughput_env(config), RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S="0")
    import ray
    from ray import serve

    from actors.serve import build

    if args.plan:
        args.bundle = copy_with_plan(args.bundle, args.plan, tempfile.mkdtemp(prefix="reasonrec-plan-"))
    bundle, data = Bundle(args.bundle), PreparedData(args.data)
    score, port = config.score, config.port
    evalset = data.eval_set("test")
    history = evalset.history
    horizon = EvidenceHorizon.from_json(bundle.read("horizon.json")).apply(history.lengths, history.offsets,
                                                                            history.items)
    routes = Scoring(bundle, score).planner.routes(np.full(len(horizon), "sequential", dtype=object), horizon)
    items = data.item_vocab.ids
    bodies = {"tools (route low)": [], "VLM (route medium/high)": []}
    for u, route in enumerate(routes):
        body = {"user_id": str(history.user_ids[u]), "k": 10,
                "history": items[history.items[history.offsets[u]:history.offsets[u + 1]] - 1].tolist()}
        bodies["tools (route low)" if route == "low" else "VLM (route medium/high)"].append(body)

    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    if args.batch_wait is not None:
        config = dataclasses.replace(config, tool_batch_wait_s=args.batch_wait)
    if args.replicas:
        fixed = {"min_replicas": args.replicas, "max_replicas": args.replicas}
        config = dataclasses.replace(config, ingress_replicas=fixed, tool_replicas=fixed, vlm_replicas=fixed)
    url = f"http://127.0.0.1:{port}/v1/recommend"
    rows = []
    if bodies["tools (route low)"]:
        serve.run(floor_app(config.tool_batch_size, config.tool_batch_wait_s), name="floor", route_prefix="/")
        pool = _repeat(bodies["tools (route low)"], args.requests)
        load(url, pool[:20], args.concurrency, None)
        rows.append(("floor (no-op app)", load(url, pool, args.concurrency, args.rate or None)))
        serve.delete("floor")
    serve.run(build(config, args.bundle), name="reasonrec", route_prefix="/")
    print(f"app up on {url}; {len(bodies['tools (route low)'])} route-low and "
          f"{len(bodies['VLM (route medium/high)'])} VLM-routed test users")
    for kind, count in (("tools (route low)", args.requests), ("VLM (route medium/high)", args.vlm_requests)):
        if not count:
            continue
        if not bodies[kind]:
            print(f"{kind}: no such users under the bundle's fitted plan")
            continue
        pool = _repeat(bodies[kind], count)
        load(url, pool[:100], args.concurrency, None)  # warm-up: model loads, first batches
        rows.append((kind, load(url, pool, args.concurrency, args.rate or None)))
    swept = {kind: sweep(url, bodies[kind], [float(r) for r in rates.split(",")], args.sweep_seconds)
             for kind, rates in (("tools (route low)", args.sweep), ("VLM (route medium/high)", args.vlm_sweep))
             if rates and bodies[kind]}
    serve.shutdown()
    mode = "high-throughput (HAProxy ingress)" if config.high_throughput else "default proxy"
    print(f"\nconcurrency {args.concurrency}, paced at {args.rate or 'max'} req/s, loopback, "
          f"{os.cpu_count()} cores, replicas {args.replicas or 'autoscaled'}, Serve mode: {mode}")
    print(f"{'requests':>24} {'n':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    floor = dict(rows).get("floor (no-op app)")
    for kind, r in rows:
        ratio = (f"  x{r['p50_ms'] / floor['p50_ms']:.1f} / x{r['p99_ms'] / floor['p99_ms']:.1f} the floor"
                 if floor else "")
        print(f"{kind:>24} {r['requests']:6d} {r['req_per_s']:8.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f}{ratio}")
    for kind, results in swept.items():
        print(f"\nsweep, {kind}: open loop, {args.sweep_seconds:.0f} s per rate, latency from each request's "
              f"scheduled time")
        print(f"{'rate':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'shed':>6}")
        for rate, r in results:
            print(f"{rate:8.0f} {r['req_per_s']:8.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['shed']:6d}")
        best = sustainable(results)
        print(f"highest rate with p99 < 100 ms and nothing shed: {best if best is not None else 'none swept'} req/s")


def _repeat(bodies: list[dict], count: int) -> list[dict]:
    return (bodies * (count // len(bodies) + 1))[:count]


if __name__ == "__main__":
    main()
