"""Bounded load on the Serve app over loopback: req/s, p50 and p99 for tools-only requests and VLM-routed ones.

    python benchmarks/serve_load.py --bundle demo_output/bundle --data demo_output/data [--requests 1000]
                                    [--concurrency 8] [--rate 100] [--plan 0.3,0.7,0.1,tool]
                                    [--sweep 50,100,200,400 --vlm-sweep 5,10,20,40] [--overload-seconds 30]

Starts on 127.0.0.1 the app (`reasonrec serve`'s code) and beside it a no-op app of the same shape (the floor:
what Serve itself costs here), and sends a fixed number of requests at a fixed concurrency (optionally paced to
``--rate`` req/s) for two kinds of users of the test split: those the fitted planner answers with the tools (route
low), in ``--passes`` passes alternating with the floor, and those it sends to the VLM. Latency is measured at
the client. ``--sweep`` / ``--vlm-sweep`` then offer each path a series of open-loop rates (and ``--refine`` more,
each halfway between the best so far and the next rate up) and report the highest one whose p99 stays under 100 ms
with nothing shed (a 503 from ``ServeConfig.ingress_max_queued``).
``--overload-seconds`` then offers the tools path 3x that rate (the app must shed the excess with fast 503s, keep
the accepted requests' p99 near the sustainable one, and its memory bounded) and right after the sustainable rate
again (it must recover).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import tempfile

import numpy as np

from reasonrec.serve.loadgen import interleaved, load, overload, refine, repeat, sustainable, sweep


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    parser.add_argument("--passes", type=int, default=5,
                        help="the floor and the tools path measured in this many alternating passes, pooled")
    parser.add_argument("--backend", default="auto", choices=("auto", "transformers", "vllm"))
    parser.add_argument("--replicas", type=int, default=1,
                        help="fixed replicas per deployment (0: ServeConfig's autoscaling); 1 fits 2 cores")
    parser.add_argument("--batch-wait", type=float, help="tool_batch_wait_s (default: ServeConfig's)")
    parser.add_argument("--plan", help="tau_low,tau_high,kappa,low: serve a copy of the bundle with this plan")
    parser.add_argument("--sweep", default="", help="tools-path rates to sweep, req/s (e.g. 50,100,200,400)")
    parser.add_argument("--vlm-sweep", default="", help="VLM-path rates to sweep, req/s (e.g. 5,10,20,40)")
    parser.add_argument("--sweep-seconds", type=float, default=10.0)
    parser.add_argument("--refine", type=int, default=2,
                        help="rates tried after each sweep, halfway between its best rate and the next one up")
    parser.add_argument("--max-ongoing", type=int, help="ingress_max_ongoing (default: ServeConfig's)")
    parser.add_argument("--max-queued", type=int, help="ingress_max_queued (default: ServeConfig's)")
    parser.add_argument("--overload-seconds", type=float, default=0.0,
                        help="after the tools sweep: 3x its highest sustainable rate for this long, then that rate")
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
    if args.max_ongoing is not None:
        config = dataclasses.replace(config, ingress_max_ongoing=args.max_ongoing)
    if args.max_queued is not None:
        config = dataclasses.replace(config, ingress_max_queued=args.max_queued)
    if args.replicas:
        fixed = {"min_replicas": args.replicas, "max_replicas": args.replicas}
        config = dataclasses.replace(config, ingress_replicas=fixed, tool_replicas=fixed, vlm_replicas=fixed)
    url = f"http://127.0.0.1:{port}/v1/recommend"
    floor_url = f"http://127.0.0.1:{port}/floor/v1/recommend"
    rows = []
    serve.run(build(config, args.bundle), name="reasonrec", route_prefix="/")
    print(f"app up on {url}; {len(bodies['tools (route low)'])} route-low and "
          f"{len(bodies['VLM (route medium/high)'])} VLM-routed test users")
    if bodies["tools (route low)"] and args.requests:
        # The floor beside the app, and the two measured in alternating passes (loadgen.interleaved).
        serve.run(floor_app(config.tool_batch_size, config.tool_batch_wait_s), name="floor", route_prefix="/floor")
        pool = repeat(bodies["tools (route low)"], args.requests)
        for warm in (floor_url, url):
            load(warm, pool[:100], args.concurrency, None)
        paths = {"floor (no-op app)": floor_url, "tools (route low)": url}
        rows += interleaved(paths, pool, args.concurrency, args.rate or None, args.passes).items()
        serve.delete("floor")
    elif not bodies["tools (route low)"]:
        print("tools (route low): no such users under the bundle's fitted plan")
    if args.vlm_requests and bodies["VLM (route medium/high)"]:
        pool = repeat(bodies["VLM (route medium/high)"], args.vlm_requests)
        load(url, pool[:100], args.concurrency, None)  # warm-up: model loads, first batches
        rows.append(("VLM (route medium/high)", load(url, pool, args.concurrency, args.rate or None)))
    elif args.vlm_requests:
        print("VLM (route medium/high): no such users under the bundle's fitted plan")
    swept = {kind: refine(url, bodies[kind], sweep(url, bodies[kind], [float(r) for r in rates.split(",")],
                                                   args.sweep_seconds), args.sweep_seconds, args.refine)
             for kind, rates in (("tools (route low)", args.sweep), ("VLM (route medium/high)", args.vlm_sweep))
             if rates and bodies[kind]}
    tools_swept = swept.get("tools (route low)", [])
    best = sustainable(tools_swept)
    shed_test = None
    if args.overload_seconds and best:
        shed_test = overload(url, bodies["tools (route low)"], 3 * best, args.overload_seconds, best,
                             min(10.0, args.overload_seconds))
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
        highest = sustainable(results)
        print(f"highest rate with p99 < 100 ms and nothing shed: {highest if highest is not None else 'none swept'} "
              "req/s")
    if shed_test:
        _print_overload(shed_test, dict(tools_swept)[best], best, args.overload_seconds)


def _print_overload(result: dict, at_best: dict, best: float, seconds: float) -> None:
    over, after = result["over"], result["after"]
    print(f"\noverload, tools (route low): {3 * best:.0f} req/s offered (3x the sustainable {best:.0f}) for "
          f"{seconds:.0f} s, then {best:.0f} req/s at once")
    print(f"  offered {over['req_per_s']:.1f} req/s: answered {over['answered_per_s']:.1f} req/s, shed "
          f"{over['shed']} of {over['requests']} ({over['shed'] / over['requests']:.0%}) with 503 + Retry-After, "
          f"p99 {over['shed_p99_ms']:.1f} ms")
    ratio = over["p99_ms"] / at_best["p99_ms"]
    print(f"  accepted p50 {over['p50_ms']:.1f} / p99 {over['p99_ms']:.1f} ms: x{ratio:.2f} the sustainable rate's "
          f"p99 ({at_best['p99_ms']:.1f} ms)")
    print(f"  Serve processes' memory: {result['memory_before_mib']:.0f} MiB before, peak "
          f"{result['memory_peak_mib']:.0f} MiB (x{result['memory_peak_mib'] / result['memory_before_mib']:.2f})")
    print(f"  then at {best:.0f} req/s: p50 {after['p50_ms']:.1f} / p99 {after['p99_ms']:.1f} ms, shed {after['shed']}")


if __name__ == "__main__":
    main()
