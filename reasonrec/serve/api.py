"""The HTTP contract of ``POST /v1/recommend`` (typed, bounded; FastAPI turns it into the OpenAPI schema)."""
from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import BaseModel, Field

from reasonrec.batch.config import ScoreConfig

MAX_HISTORY = 200
MAX_CANDIDATES = 100
MAX_K = 100
MAX_BODY_BYTES = 64 * 1024
ID = Field(min_length=1, max_length=256, pattern=r"^\S(.*\S)?$")


class RecommendRequest(BaseModel):
    model_config = {"extra": "forbid"}

    user_id: str = ID
    task: Literal["sequential", "direct", "ctr", "explain"] = "sequential"
    history: list[str] | None = Field(default=None, max_length=MAX_HISTORY,
                                      description="item ids, oldest first; omitted: the user's history in the "
                                                  "bundle's data")
    candidates: list[str] | None = Field(default=None, min_length=1, max_length=MAX_CANDIDATES,
                                         description="items to rank; omitted: the whole catalogue (sequential)")
    k: int = Field(default=10, ge=1, le=MAX_K)
    item_id: str | None = Field(default=None, max_length=256, description="explain: the item to explain")
    rating: float | None = Field(default=None, description="explain: the user's star rating of the item, 1-5")


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    user_id: str
    task: str
    items: list[ScoredItem]
    route: str
    path: str
    horizon: float
    confidence: float
    tools: list[str]
    trace: str
    model_version: str
    text: str | None = None  # explain: the generated explanation


@dataclasses.dataclass
class ServeConfig:
    """The Serve app's settings (YAML ``--config`` of ``reasonrec serve``, or ``args`` in manifests/serve.yaml)."""

    score: ScoreConfig = dataclasses.field(default_factory=ScoreConfig)
    host: str = "127.0.0.1"
    port: int = 8000
    tool_batch_size: int = 32  # @serve.batch: requests the tool replica scores together
    # 0: a batch is what queued while the replica was busy (a lone request never waits; load makes batches grow)
    tool_batch_wait_s: float = 0.0
    vlm_batch_size: int = 16
    vlm_batch_wait_s: float = 0.02
    # Serve autoscaling configs; a batching deployment counts a batch's requests as ongoing at once.
    ingress_replicas: dict = dataclasses.field(default_factory=lambda: {"min_replicas": 1, "max_replicas": 2})
    tool_replicas: dict = dataclasses.field(default_factory=lambda: {
        "min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16})
    vlm_replicas: dict = dataclasses.field(default_factory=lambda: {
        "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8})
    # Requests one ingress replica holds at once (Serve's default is 5) and, beyond that, lets wait for a slot; the
    # next gets an immediate 503 with Retry-After (-1: queue without bound, Serve's default). Under overload an
    # accepted request waits about (ongoing + queued) / throughput: 48 keeps that near 0.15 s on 2 cores while
    # normal load never fills it (benchmarks/serve_load.py --overload-seconds; docs/results.md).
    ingress_max_ongoing: int = 32
    ingress_max_queued: int = 16
    retry_after_s: float = 1.0
    cpus_per_replica: float = 0.25
    torch_threads: int = 1  # per replica: replicas share the node's cores, one thread each avoids oversubscription
    # Ray Serve's high-throughput mode: HAProxy holds the HTTP port and forwards straight to the ingress replicas (no
    # Python proxy hop) and replicas call each other over gRPC (HIGH_THROUGHPUT_ENV). Every Serve
    # process must start with it, so it is an environment of the Ray processes (``high_throughput_env``):
    # ``reasonrec serve`` sets it for the Ray it starts; a cluster sets it where it starts Ray (cluster/, manifests/).
    high_throughput: bool = True


# The third runs each replica's own code on a thread (and event loop) of its own, apart from the loop that takes
# requests in: the throughput mode alone runs it on that loop, where a tool replica's CPU-bound batch kept every
# other request out until it finished, so each batch held ~1 request and the replica saturated one core at ~150
# req/s of single-request batches; apart, requests keep arriving during a batch and the next batch takes them
# together (docs/serving.md, docs/results.md "Session of 2026-12-06").
HIGH_THROUGHPUT_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                       "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1"}


def high_throughput_env(config: ServeConfig) -> dict[str, str]:
    """What the Ray processes' environment must hold before Ray starts for ``config``'s Serve mode."""
    return dict(HIGH_THROUGHPUT_ENV) if config.high_throughput else {}
