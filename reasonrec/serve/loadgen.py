"""Open-loop HTTP load against a Serve app on this machine: latency percentiles, shed requests (503 + Retry-After)
and the Serve processes' memory. ``benchmarks/serve_load.py`` and the Serve tests use it.

Latency is counted from each request's scheduled time (open loop), so a server that falls behind is charged for the
wait too; one keep-alive connection per client thread keeps the client lean.
"""
from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def load(url: str, bodies: list[dict], concurrency: int, rate: float | None, open_loop: bool = False) -> dict:
    """Rates and latency percentiles of POSTing every body (``send``)."""
    return summary(*send(url, bodies, concurrency, rate, open_loop))


def send(url: str, bodies: list[dict], concurrency: int, rate: float | None,
         open_loop: bool = False) -> tuple[list[tuple[int, float]], float]:
    """(status, ms) of POSTing every body, and the seconds it took (one keep-alive connection per client thread:
    a lean client leaves the cores to the server). ``open_loop`` (with ``rate``): each latency counts from the
    request's scheduled time, so a server that falls behind is charged for the wait too. Answers (200) and shed
    requests (503, which must carry Retry-After) are timed apart; any other status raises."""
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
        if reply.status == 503 and reply.getheader("Retry-After") is None:
            raise RuntimeError("HTTP 503 without Retry-After")
        return reply.status, 1000 * (time.perf_counter() - t)

    with ThreadPoolExecutor(concurrency) as pool:
        replies = list(pool.map(one, range(len(bodies))))
    return replies, time.perf_counter() - start


def summary(replies: list[tuple[int, float]], seconds: float) -> dict:
    """Rates and percentiles of (status, ms) replies sent over ``seconds``."""
    answered = np.array([ms for status, ms in replies if status == 200] or [np.nan])
    shed = np.array([ms for status, ms in replies if status == 503] or [np.nan])
    return {"requests": len(replies), "req_per_s": len(replies) / seconds, "p50_ms": float(np.percentile(answered, 50)),
            "p99_ms": float(np.percentile(answered, 99)), "shed": int(np.isfinite(shed).sum()),
            "answered_per_s": int(np.isfinite(answered).sum()) / seconds, "shed_p50_ms": float(np.percentile(shed, 50)),
            "shed_p99_ms": float(np.percentile(shed, 99))}


def interleaved(urls: dict[str, str], bodies: list[dict], concurrency: int, rate: float | None,
                passes: int) -> dict[str, dict]:
    """``bodies`` sent to every url in turn, in ``passes`` rounds of an equal share, each url's replies pooled
    over its passes: on a shared machine whose speed drifts from minute to minute, paths compared this way see
    the same conditions (one pass each, one after the other, read ratios from 1.5x to 2.4x of the same code)."""
    share = max(1, len(bodies) // passes)
    pooled: dict[str, list] = {name: [] for name in urls}
    seconds = dict.fromkeys(urls, 0.0)
    for i in range(passes):
        for name, url in urls.items():
            replies, took = send(url, bodies[i * share:(i + 1) * share], concurrency, rate)
            pooled[name] += replies
            seconds[name] += took
    return {name: summary(pooled[name], seconds[name]) for name in urls}


def sweep(url: str, bodies: list[dict], rates: list[float], seconds: float) -> list[tuple[float, dict]]:
    """Open-loop load at each rate for ``seconds``: enough client threads for a second's worth of requests in
    flight at 250 ms each, so the client is not what limits the rate."""
    out = []
    for rate in rates:
        pool = repeat(bodies, max(20, int(rate * seconds)))
        out.append((rate, load(url, pool, max(8, int(rate / 4)), rate, open_loop=True)))
    return out


def serve_memory_mib() -> float:
    """Resident memory of this Ray session's Serve processes (replicas, controller, HAProxy), MiB."""
    import psutil

    import ray._private.worker

    (raylet,) = ray._private.worker._global_node.all_processes["raylet"]
    total = 0
    for process in psutil.Process(raylet.process.pid).children(recursive=True):
        try:
            title = " ".join(process.cmdline())
            if "Serve" in title or "haproxy" in title:
                total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def overload(url: str, bodies: list[dict], rate: float, seconds: float, after_rate: float,
             after_seconds: float) -> dict:
    """Open-loop load at ``rate`` for ``seconds`` (the Serve processes' memory sampled every half second), then at
    once ``after_rate`` for ``after_seconds``: does the app shed, stay bounded and recover?"""
    before, peak, stop = serve_memory_mib(), [0.0], threading.Event()

    def sample():
        while not stop.wait(0.5):
            peak[0] = max(peak[0], serve_memory_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    over = load(url, repeat(bodies, int(rate * seconds)), max(8, int(rate / 4)), rate, open_loop=True)
    stop.set()
    sampler.join()
    after = load(url, repeat(bodies, int(after_rate * after_seconds)), max(8, int(after_rate / 4)), after_rate,
                 open_loop=True)
    return {"over": over, "after": after, "memory_before_mib": before, "memory_peak_mib": max(peak[0], before)}


def sustainable(results: list[tuple[float, dict]], p99_ms: float = 100.0) -> float | None:
    """The highest rate whose p99 stays under ``p99_ms`` with nothing shed (and every lower rate too)."""
    best = None
    for rate, r in sorted(results, key=lambda x: x[0]):
        if r["p99_ms"] >= p99_ms or r["shed"] or r["req_per_s"] < 0.9 * rate:
            break
        best = rate
    return best


def repeat(bodies: list[dict], count: int) -> list[dict]:
    return (bodies * (count // len(bodies) + 1))[:count]
