"""The Ray Serve app: a FastAPI ingress (validation, history, the planner) composed with a tool-scoring deployment
(CPU, ``@serve.batch``) and a deliberator deployment (the VLM; a GPU per replica when the cluster has GPUs).

    serve run manifests/serve.yaml          # or: reasonrec serve --bundle URI

Every stage is the nightly job's own (``reasonrec.batch``), so a served answer equals the job's row for the same
bundle and request.
"""
from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
import torch
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle

from reasonrec.batch.config import ScoreConfig
from reasonrec.batch.context import Scoring
from reasonrec.batch.planner_stage import PlannerStage
from reasonrec.batch.vlm_stage import VLMStage
from reasonrec.serve.api import MAX_BODY_BYTES, RecommendRequest, RecommendResponse, ServeConfig
from actors.stages import vlm_resources
from reasonrec.serve.recommender import Histories, ToolAnswerer, in_order, renumbered, responses

api = FastAPI(title="ReasonRec", version="0.1.0",
              description="Recommendations from the risk-aware planner: tools, VLM, or both, by evidence horizon.")


class BodyLimit:
    """Refuse a body over MAX_BODY_BYTES before it is read (plain ASGI: Starlette's BaseHTTPMiddleware costs a task
    per request)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            size = dict(scope["headers"]).get(b"content-length")
            if size is None:
                return await JSONResponse({"detail": "body: Content-Length required"}, status_code=411)(
                    scope, receive, send)
            if not size.isdigit() or int(size) > MAX_BODY_BYTES:
                return await JSONResponse({"detail": f"body: larger than {MAX_BODY_BYTES} bytes"}, status_code=413)(
                    scope, receive, send)
        await self.app(scope, receive, send)


api.add_middleware(BodyLimit)


@serve.deployment
class ToolScorer:
    def __init__(self, bundle_uri: str, config: ScoreConfig, batch_size: int, wait_s: float):
        torch.set_num_threads(config.torch_threads)
        self.answer = ToolAnswerer(Scoring.load(bundle_uri, config))
        self.recommend.set_max_batch_size(batch_size)
        self.recommend.set_batch_wait_timeout_s(wait_s)

    @serve.batch
    async def recommend(self, requests: list[dict]) -> list[dict | pa.Table]:
        return self.answer(requests)


@serve.deployment
class Deliberator:
    def __init__(self, bundle_uri: str, config: ScoreConfig, batch_size: int, wait_s: float):
        scoring = Scoring.load(bundle_uri, config)
        self.stage, self.decide = VLMStage(scoring), PlannerStage(scoring)
        self.deliberate.set_max_batch_size(batch_size)
        self.deliberate.set_batch_wait_timeout_s(wait_s)

    @serve.batch
    async def deliberate(self, rows: list[pa.Table]) -> list[dict]:
        return responses(in_order(self.decide(self.stage(renumbered(rows)))))


def over_grpc(handle: DeploymentHandle) -> DeploymentHandle:
    """``handle`` calling its replicas over gRPC. A handle's transport is fixed where the app is built, from that
    process's environment when it imported Ray Serve: without this, an app built by a process that imported Serve
    before RAY_SERVE_THROUGHPUT_OPTIMIZED=1 was set calls by reference (measured: tools p50 25 ms instead of 13)."""
    return handle.options(_by_reference=False)


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, tools, deliberator, bundle_uri: str, config: ScoreConfig, grpc: bool = True):
        scoring = Scoring.load(bundle_uri, config)
        if grpc:
            tools, deliberator = over_grpc(tools), over_grpc(deliberator)
        self.tools, self.deliberator, self.config = tools, deliberator, config
        self.version, self.tool_names = scoring.bundle.version, scoring.tools
        self.histories = Histories(scoring.bundle.manifest.get("data", {}).get("uri"))

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/v1/bundle")
    def bundle(self) -> dict:
        return {"version": self.version, "mode": self.config.mode, "tools": self.tool_names}

    @api.post("/v1/recommend", response_model=RecommendResponse)
    async def recommend(self, body: RecommendRequest) -> Response:
        request = body.model_dump()
        if body.history is None:
            request["history"] = self.histories.get(body.user_id)
        answer = await self.tools.recommend.remote(request)
        if isinstance(answer, pa.Table):  # the planner sends this row to the VLM
            answer = await self.deliberator.deliberate.remote(answer)
        if "error" in answer:  # the validator names a client's mistake; a broken catalogue image is ours
            raise HTTPException(status_code=500 if answer["stage"] == "vlm" else 422, detail=answer["error"])
        # Built by the job's own planner stage to the response schema: skip FastAPI's second validation pass.
        return Response(json.dumps(answer), media_type="application/json")


def build(config: ServeConfig, bundle_uri: str):
    """The bound application (``serve.run(build(...))``)."""
    Scoring.load(bundle_uri, config.score).check()
    score = dataclasses.replace(config.score, torch_threads=config.torch_threads)
    cpu = {"num_cpus": config.cpus_per_replica}
    # A batching replica must take more requests at once than it batches, or Serve's default cap (5) is the batch.
    tools = ToolScorer.options(ray_actor_options=cpu, autoscaling_config=config.tool_replicas,
                               max_ongoing_requests=2 * config.tool_batch_size).bind(
        bundle_uri, score, config.tool_batch_size, config.tool_batch_wait_s)
    deliberator = Deliberator.options(
        ray_actor_options=vlm_resources(config.score.deliberator), autoscaling_config=config.vlm_replicas,
        max_ongoing_requests=2 * config.vlm_batch_size).bind(
        bundle_uri, score, config.vlm_batch_size, config.vlm_batch_wait_s)
    return Ingress.options(ray_actor_options=cpu, autoscaling_config=config.ingress_replicas,
                           max_ongoing_requests=config.ingress_max_ongoing,
                           max_queued_requests=config.ingress_max_queued,
                           backpressure_config=BackpressureConfig(retry_after_s=config.retry_after_s)).bind(
        tools, deliberator, bundle_uri, score, config.high_throughput)


def app(args: dict):
    """Entry point of ``serve run manifests/serve.yaml``: ``args`` holds ``bundle`` and ServeConfig fields."""
    from reasonrec.config import from_dict

    args = dict(args)
    bundle_uri = args.pop("bundle")
    return build(from_dict(ServeConfig, args, source="serve app args"), bundle_uri)
