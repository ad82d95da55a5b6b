"""Open-loop HTTP load against a Serve app on this machine: latency percentiles, shed requests (503 + Retry-After)
and the Serve processes' memory. ``benchmarks/serve_load.py`` and the Serve tests use it.

Latency is counted from each request's scheduled time (open loop), so a server that falls behind is charged for the
wait too; one asyncio loop over keep-alive connections keeps the client lean.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.parse

import numpy as np


def load(url: str, bodies: list[dict], concurrency: int, rate: float | None, open_loop: bool = False) -> dict:
    """Rates and latency percentiles of POSTing every body (``send``)."""
    return summary(*send(url, bodies, concurrency, rate, open_loop))


def send(url: str, bodies: list[dict], concurrency: int, rate: float | None,
         open_loop: bool = False) -> tuple[list[tuple[int, float]], float]:
    """(status, ms) of POSTing every body, and the seconds it took, at most ``concurrency`` requests in flight over
    keep-alive connections. ``rate``: request i is sent at i / rate seconds; ``open_loop`` (with ``rate``): each
    latency counts from the request's scheduled time, so a server that falls behind is charged for the wait too.
    Answers (200) and shed requests (503, which must carry Retry-After) are timed apart; any other status raises.

    One asyncio loop writes pre-built requests and reads replies: the client shares the cores with the server, and a
    thread per connection (http.client) spent a large share of them at hundreds of requests a second. (aiohttp's
    client, measured the same way, took 10% of a core at 150 req/s and 14-17% at 300 against this one's 5% and
    8-11%, and the no-op floor read slower beside it: on 2 shared cores the client's cost is part of what is
    measured.)"""
    return asyncio.run(_send(urllib.parse.urlsplit(url), bodies, concurrency, rate, open_loop))


async def _send(address, bodies: list[dict], concurrency: int, rate: float | None,
                open_loop: bool) -> tuple[list[tuple[int, float]], float]:
    head = (f"POST {address.path} HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: application/json\r\n"
            "Content-Length: {}\r\n\r\n")
    requests = [head.format(len(p)).encode() + p for p in (json.dumps(b).encode() for b in bodies)]
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    opened: list[asyncio.StreamWriter] = []
    slots = asyncio.Semaphore(concurrency)
    replies: list[tuple[int, float]] = [(0, 0.0)] * len(requests)
    start = time.perf_counter()

    async def one(i: int) -> None:
        due = start + i / rate if rate else None
        async with slots:
            if idle:
                connection = idle.pop()
            else:
                connection = await asyncio.open_connection(address.hostname, address.port)
                opened.append(connection[1])
            t = due if open_loop and due else time.perf_counter()
            status, keep = await asyncio.wait_for(_exchange(*connection, requests[i]), 120)
            replies[i] = (status, 1000 * (time.perf_counter() - t))
            if keep:
                idle.append(connection)
            else:
                connection[1].close()

    try:
        if rate:  # open loop: request i starts at i / rate seconds, whatever is still in flight
            tasks = []
            for i in range(len(requests)):
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
                tasks.append(asyncio.ensure_future(one(i)))
            await asyncio.gather(*tasks)
        else:  # closed loop: `concurrency` requests in flight, the next sent as one returns
            await asyncio.gather(*(one(i) for i in range(len(requests))))
    finally:
        for writer in opened:
            writer.close()
    return replies, time.perf_counter() - start


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bool]:
    """(status, whether the connection stays open) of one HTTP/1.1 request; the body is read and dropped."""
    writer.write(request)
    lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:] if line))
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
    else:
        body = await reader.read()
        headers["connection"] = "close"
    if status not in (200, 503):
        raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
    if status == 503 and "retry-after" not in headers:
        raise RuntimeError("HTTP 503 without Retry-After")
    return status, headers.get("connection", "").lower() != "close"


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


def refine(url: str, bodies: list[dict], results: list[tuple[float, dict]], seconds: float,
           steps: int) -> list[tuple[float, dict]]:
    """``results`` of a sweep with up to ``steps`` more rates, each halfway between the highest sustainable rate so
    far and the lowest rate above it: a coarse sweep's best rate is only a lower bound of the app's."""
    results = sorted(results, key=lambda x: x[0])
    for _ in range(steps):
        best = sustainable(results)
        above = [rate for rate, _ in results if best is not None and rate > best]
        if not above or min(above) - best < 0.05 * best:
            break
        results = sorted(results + sweep(url, bodies, [round((best + min(above)) / 2)], seconds), key=lambda x: x[0])
    return results


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
