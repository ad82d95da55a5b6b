"""Cluster launcher YAMLs against Ray's own schema, and the KubeRay manifests against the project's entry points."""
import json
import shlex
from pathlib import Path

import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTERS = sorted((REPO / "cluster").glob("*.yaml"))
MANIFESTS = sorted((REPO / "manifests").glob("*.yaml"))


@pytest.mark.parametrize("path", CLUSTERS, ids=lambda p: p.name)
def test_cluster_yaml_validates_against_the_schema_shipped_with_ray(path):
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(config))  # what `ray up` runs: provider defaults filled in, then checked
    mounted = set(config["file_mounts"])
    for command in config["setup_commands"]:
        assert any(f"-e {m}" in command for m in mounted), f"{command!r} installs what file_mounts does not ship"


def test_cloud_cluster_has_a_head_a_cpu_group_and_a_gpu_group():
    config = yaml.safe_load((REPO / "cluster" / "aws.yaml").read_text())
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # the head runs no actors
    for name, extra in (("cpu_worker", False), ("gpu_worker", True)):
        group = types[name]
        assert 0 <= group["min_workers"] <= group["max_workers"] <= config["max_workers"]
        assert ("GPU" in group["resources"]) == extra
        installs = " ".join(group.get("worker_setup_commands", config["setup_commands"]))
        assert ("[vllm]" in installs) == extra  # vLLM only where there is a GPU


def test_every_extra_the_deployments_install_exists():
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "vllm" in extras
    assert 'pip install --no-cache-dir -e ".[vllm]"' in (REPO / "Dockerfile").read_text()


def job_specs():
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "RayJob":
                yield path.name, doc["spec"]
            elif doc and doc.get("kind") == "RayCronJob":
                yield path.name, doc["spec"]["jobTemplate"]


@pytest.mark.parametrize("name,spec", list(job_specs()), ids=lambda v: v if isinstance(v, str) else "")
def test_kuberay_jobs_run_real_entry_points_with_real_flags(name, spec):
    import argparse

    from jobs import nightly_score

    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and (REPO / argv[1]).is_file(), f"{name}: {argv[1]} is not in the project"
    assert argv[1] == "jobs/nightly_score.py"
    parser = argparse.ArgumentParser()
    nightly_score.add_arguments(parser)
    args = parser.parse_args(argv[2:])  # an unknown or misspelt flag fails here
    score = nightly_score.config(args).score
    assert score.mode == "planner" and score.deliberator.resources()["num_gpus"] == 1  # asked before any GPU exists
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu-workers", "gpu-workers"}
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    advertised = json.loads(yaml.safe_load(groups["cpu-workers"]["rayStartParams"]["resources"]))
    assert set(score.cpu_actor_resources) <= set(advertised)  # the CPU actors fit the CPU group, and only it
    gpu = groups["gpu-workers"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == "1"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_the_schedule_is_daily():
    docs = [d for p in MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d and d.get("kind") == "RayCronJob"]
    assert len(docs) == 1
    minute, hour, *rest = docs[0]["spec"]["schedule"].split()
    assert rest == ["*", "*", "*"] and minute.isdigit() and hour.isdigit()


def serve_configs():
    yield "serve.yaml", yaml.safe_load((REPO / "manifests" / "serve.yaml").read_text())
    service = yaml.safe_load((REPO / "manifests" / "rayservice.yaml").read_text())
    assert service["kind"] == "RayService"
    yield "rayservice.yaml", yaml.safe_load(service["spec"]["serveConfigV2"])


@pytest.mark.parametrize("name,config", list(serve_configs()), ids=lambda v: v if isinstance(v, str) else "")
def test_serve_configs_validate_and_point_at_the_app_builder(name, config):
    import dataclasses
    import importlib

    from ray.serve.schema import ServeDeploySchema

    from reasonrec.config import from_dict
    from reasonrec.serve.api import ServeConfig

    ServeDeploySchema.model_validate(config)  # Ray Serve's own schema of a config file
    (application,) = config["applications"]
    module, attr = application["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attr))
    args = dict(application["args"])
    assert args.pop("bundle")
    assert set(args) <= {f.name for f in dataclasses.fields(ServeConfig)}
    from_dict(ServeConfig, args)  # every field and nested ScoreConfig field is real
    if name == "serve.yaml":
        assert config["http_options"]["host"] == "127.0.0.1"  # local runs bind loopback by default


def test_every_ray_start_of_the_serving_deployments_is_in_serve_high_throughput_mode():
    """The mode is an environment every Serve process must start with (ServeConfig.high_throughput)."""
    from reasonrec.serve.api import HIGH_THROUGHPUT_ENV

    for path in CLUSTERS:
        config = yaml.safe_load(path.read_text())
        commands = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
        starts = [c for c in commands if "ray start" in c]
        assert len(starts) == 2, path.name
        for command in starts:
            prefix = command.split("ray start")[0]
            assert all(f"{name}={value} " in prefix for name, value in HIGH_THROUGHPUT_ENV.items()), command
    service = yaml.safe_load((REPO / "manifests" / "rayservice.yaml").read_text())["spec"]["rayClusterConfig"]
    groups = [service["headGroupSpec"], *service["workerGroupSpecs"]]
    for group in groups:
        (container,) = group["template"]["spec"]["containers"]
        assert {e["name"]: e["value"] for e in container["env"]} == HIGH_THROUGHPUT_ENV, container["name"]
