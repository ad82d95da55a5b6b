"""Serve live recommendations with Ray Serve: POST /v1/recommend, GET /healthz, GET /v1/bundle, OpenAPI at /docs.

The same stages and planner as the nightly job answer each request (a served answer equals the job's row for the
same bundle and request). By default Serve runs in its high-throughput mode (HAProxy ingress, gRPC between
replicas); it is an environment of the Ray processes, so it is set before a local Ray starts."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from jobs import cli
from reasonrec.serve.api import ServeConfig


@dataclasses.dataclass
class ServeJob:
    bundle: str
    serve: ServeConfig = dataclasses.field(default_factory=ServeConfig)
    block: bool = True  # False: return once the app is up (scripts, tests)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = lambda field: cli.default(ServeConfig, field)  # noqa: E731
    parser.add_argument("--bundle", required=True, help="the committed model bundle to serve")
    parser.add_argument("--host", help=f"bind address (default {d('host')})")
    parser.add_argument("--port", type=int, help=f"default {d('port')}")
    parser.add_argument("--mode", choices=("tools-only", "vlm-only", "vlm+tools-always", "planner"),
                        help="who answers (default planner)")
    parser.add_argument("--vlm-backend", choices=("auto", "transformers", "vllm"),
                        help="default auto: vLLM when installed")
    parser.add_argument("--vlm-device", choices=("cuda", "cpu"),
                        help="where the VLM actors run: cuda asks Ray for a GPU each (default), cpu for none")
    parser.add_argument("--default-proxy", action="store_true",
                        help="Serve's Python proxy instead of the high-throughput mode (HAProxy ingress)")
    parser.add_argument("--config", help="YAML with ServeConfig fields (score: {ScoreConfig fields}, replicas, "
                                         "batching)")
    parser.add_argument("--no-block", action="store_true", help="return once the app is up (scripts, tests)")


def config(args: argparse.Namespace) -> ServeJob:
    from reasonrec.config import load

    overrides = {"host": args.host, "port": args.port, "score.mode": args.mode,
                 "score.deliberator.backend": args.vlm_backend, "score.deliberator.device": args.vlm_device,
                 "high_throughput": False if args.default_proxy else None}
    return ServeJob(args.bundle, load(ServeConfig, args.config, overrides), block=not args.no_block)


def run(job: ServeJob) -> dict:
    import os
    import time

    from reasonrec import storage
    from reasonrec.serve.api import high_throughput_env

    config = job.serve
    # Before Ray Serve is imported (it reads its mode at import) and before a local Ray starts (its processes inherit
    # it); on a cluster, the cluster's own environment decides (cluster/, manifests/).
    os.environ.update(high_throughput_env(config))
    from ray import serve

    from actors.serve import build

    cli.ray_init()
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build(config, storage.absolute(job.bundle)), name="reasonrec", route_prefix="/")
    url = f"http://{config.host}:{config.port}"
    mode = "high-throughput (HAProxy ingress)" if config.high_throughput else "default proxy"
    cli.log().info(f"serving {job.bundle} at {url}/v1/recommend (OpenAPI: {url}/docs, health: {url}/healthz; "
                   f"Serve mode: {mode}); Ctrl-C stops")
    if job.block:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()
    return {"url": url}


def main(argv: list[str] | None = None) -> int:
    return cli.run_module(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
