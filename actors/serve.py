"""The Ray Serve app: a FastAPI ingress (validation, history, the planner) composed with a tool-scoring deployment
(CPU, ``@serve.batch``) and a deliberator deployment (the VLM; a GPU per replica when the cluster has GPUs).

    serve run manifests/serve.yaml          # or: reasonrec serve --bundle URI

Every stage is the nightly job's own (``reasonrec.batch``), so a served answer equals the job's row for the same
bundle and request.
"""
from __future__ import annotations

import pyarrow as pa
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from ray import serve

from reasonrec.batch.config import ScoreConfig, make_planner
from reasonrec.batch.horizon_stage import HorizonStage
from reasonrec.batch.planner_stage import PlannerStage
from reasonrec.batch.tool_stage import ToolStage
from reasonrec.batch.vlm_stage import VLMStage
from reasonrec.bundle import Bundle
from reasonrec.serve.api import MAX_BODY_BYTES, RecommendRequest, RecommendResponse, ServeConfig
from reasonrec.serve.recommender import Histories, request_rows, response, split_rows

api = FastAPI(title="ReasonRec", version="0.1.0",
              description="Recommendations from the risk-aware planner: tools, VLM, or both, by evidence horizon.")


@api.middleware("http")
async def limit_body(request: Request, call_next):
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > MAX_BODY_BYTES):
        return JSONResponse({"detail": f"body: larger than {MAX_BODY_BYTES} bytes"}, status_code=413)
    return await call_next(request)


@serve.deployment
class ToolScorer:
    def __init__(self, bundle_uri: str, config: ScoreConfig, batch_size: int, wait_s: float):
        bundle = Bundle(bundle_uri)
        self.horizon, self.tools = HorizonStage(bundle, config), ToolStage(bundle, config)
        self.score.set_max_batch_size(batch_size)
        self.score.set_batch_wait_timeout_s(wait_s)

    @serve.batch
    async def score(self, rows: list[pa.Table]) -> list[pa.Table]:
        return split_rows(self.tools(self.horizon(pa.concat_tables(rows))))


@serve.deployment
class Deliberator:
    def __init__(self, bundle_uri: str, config: ScoreConfig, batch_size: int, wait_s: float):
        self.stage = VLMStage(Bundle(bundle_uri), config)
        self.deliberate.set_max_batch_size(batch_size)
        self.deliberate.set_batch_wait_timeout_s(wait_s)

    @serve.batch
    async def deliberate(self, rows: list[pa.Table]) -> list[pa.Table]:
        return split_rows(self.stage(pa.concat_tables(rows)))


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, tools, deliberator, bundle_uri: str, config: ScoreConfig):
        bundle = Bundle(bundle_uri)
        self.tools, self.deliberator, self.config = tools, deliberator, config
        self.planner, self.decide = make_planner(bundle, config), PlannerStage(bundle, config)
        self.version = bundle.version
        self.histories = Histories(bundle.manifest.get("data", {}).get("uri"))

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/v1/bundle")
    def bundle(self) -> dict:
        return {"version": self.version, "mode": self.config.mode, "tools": self.planner.tools}

    @api.post("/v1/recommend", response_model=RecommendResponse)
    async def recommend(self, body: RecommendRequest) -> RecommendResponse:
        history = body.history if body.history is not None else self.histories.get(body.user_id)
        row = await self.tools.score.remote(request_rows(body, history))
        error = row.column("error")[0].as_py()
        if error is not None:  # the job's validator named the field: a client mistake
            raise HTTPException(status_code=422, detail=error)
        if self.planner.needs_vlm(self.config.mode, row.column("route").to_numpy(zero_copy_only=False))[0]:
            row = await self.deliberator.deliberate.remote(row)
        return response(self.decide(row))


def build(config: ServeConfig, bundle_uri: str):
    """The bound application (``serve.run(build(...))``)."""
    from reasonrec.batch.config import check_bundle

    check_bundle(Bundle(bundle_uri), config.score)
    cpu = {"num_cpus": config.cpus_per_replica}
    tools = ToolScorer.options(ray_actor_options=cpu, autoscaling_config=config.tool_replicas).bind(
        bundle_uri, config.score, config.tool_batch_size, config.tool_batch_wait_s)
    deliberator = Deliberator.options(
        ray_actor_options=_vlm_resources(config), autoscaling_config=config.vlm_replicas).bind(
        bundle_uri, config.score, config.vlm_batch_size, config.vlm_batch_wait_s)
    return Ingress.options(ray_actor_options=cpu, autoscaling_config=config.ingress_replicas).bind(
        tools, deliberator, bundle_uri, config.score)


def _vlm_resources(config: ServeConfig) -> dict:
    import ray

    return config.score.deliberator.resources(ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0)


def app(args: dict):
    """Entry point of ``serve run manifests/serve.yaml``: ``args`` holds ``bundle`` and ServeConfig fields."""
    from reasonrec.config import from_dict

    args = dict(args)
    bundle_uri = args.pop("bundle")
    return build(from_dict(ServeConfig, args), bundle_uri)
