import os
import socket
from pathlib import Path

import pytest

from reasonrec.serve.api import ServeConfig, high_throughput_env

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
KINDS = ("unit", "integration", "vllm")  # tests/<kind>/: the marker each test gets (pyproject.toml)

# Before anything starts Ray: local tests need no token auth, and S3 settings reach Ray workers via the env.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Serve in the mode `reasonrec serve` runs in (HAProxy ingress), without the 30 s drain a load balancer needs; set
# before any test module imports Ray Serve, which reads it at import.
os.environ.update(high_throughput_env(ServeConfig()), RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S="0")
# Distinctive values, so that a test can show that they never reach a log, a trace or a manifest.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "AKIAREASONRECTEST7Q2")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "rr-secret-9f3b7c1e4d2a-never-logged")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# Storage retries (standard AWS variable): few enough to keep failing tests short, enough that the fault tests'
# random 8 % of failed requests never hit one request on every attempt (0.08^5 per request). Each attempt more
# doubles the backoff a test of a persistent failure waits through.
os.environ.setdefault("AWS_MAX_ATTEMPTS", "5")
# Ray Train's controller polls its workers every 2 s by default: each fine-tune here (a few seconds of steps) waited
# up to 2 s at start, at each report and at the end (an empty TorchTrainer.fit: 13.5 s -> 8.2 s at 0.2 s).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


def pytest_collection_modifyitems(items):
    for item in items:
        kind = Path(item.fspath).parent.name
        if kind in KINDS:
            item.add_marker(kind)


def copy_files(uri: str, to: str) -> str:
    """Every file below ``uri`` (a bundle, say) copied below ``to``, local or S3; returns ``to``."""
    from reasonrec import storage

    for rel in storage.list_files(uri):
        storage.write_bytes(storage.join(to, rel), storage.read_bytes(storage.join(uri, rel)))
    return to


def actor_processes(kind: str) -> list:
    """Live worker processes of an actor class (Ray titles them ``ray::MapWorker(MapBatches(<class>))...``, or
    ``ray::<class>...``)."""
    import psutil

    import ray._private.worker

    # Only this session's workers (descendants of its raylet): another Ray may run on the machine.
    (raylet,) = ray._private.worker._global_node.all_processes["raylet"]
    found = []
    for process in psutil.Process(raylet.process.pid).children(recursive=True):
        try:
            title = " ".join(process.cmdline())
        except psutil.NoSuchProcess:
            continue
        if title.startswith(f"ray::{kind}") or (title.startswith("ray::") and f"({kind})" in title):
            found.append(process.pid)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_proxy():
    """A real S3 HTTP endpoint on 127.0.0.1 (moto's threaded server) with a bucket ``reasonrec-test``, reached
    through a fault-injecting proxy (transparent until a test gives it a plan: tests/s3_faults.py)."""
    import boto3
    from moto.server import ThreadedMotoServer
    from s3_faults import FaultProxy

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    proxy = FaultProxy(port).start()
    endpoint = f"http://127.0.0.1:{proxy.port}"
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="reasonrec-test")
    yield proxy
    proxy.stop()
    server.stop()


@pytest.fixture(scope="session")
def s3_endpoint(s3_proxy):
    return f"http://127.0.0.1:{s3_proxy.port}"


@pytest.fixture(scope="session")
def ray_session(s3_endpoint):
    """One Ray instance for the whole test session (started after the S3 env is set, so workers inherit it)."""
    import ray

    ray.init(num_cpus=2, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory):
    from reasonrec.data import synthetic

    out = tmp_path_factory.mktemp("synthetic")
    # The established catalogue: the tools' and the planner's margins are asserted on it. New arrivals (which an ID-only
    # CTR tool scores miscalibrated, LogLoss above the base rate's) have their own tests (tests/unit/test_synthetic.py).
    synthetic.write(synthetic.SyntheticConfig(users=800, items=150, seed=3, new_share=0.0), str(out))
    return str(out)


@pytest.fixture(scope="session")
def synthetic_data(synthetic_raw, tmp_path_factory):
    from reasonrec.data import loaders, prepared

    out = str(tmp_path_factory.mktemp("prepared"))
    prepared.prepare(loaders.load(synthetic_raw, "parquet"), out)
    return prepared.PreparedData(out)


SMALL_TOOLS = {"sasrec": {"batch_size": 64, "lr": 3e-3, "epochs": 6}, "lightgcn": {"batch_size": 512, "epochs": 6},
               "dcnv2": {"batch_size": 512, "lr": 1e-2, "epochs": 8}}


@pytest.fixture(scope="session")
def bundle_uri(synthetic_data, s3_endpoint):
    """A small committed bundle (SASRec + LightGCN for ranking, DCNv2 for ctr; trained in-process) on the S3
    server."""
    import tempfile

    import torch

    from reasonrec.bundle import BundleWriter
    from reasonrec.horizon import HorizonConfig
    from reasonrec.train.loop import fit
    from reasonrec.train.tools import add_data_files, build_tool

    torch.manual_seed(0)
    uri = "s3://reasonrec-test/nightly/bundle"
    with BundleWriter(uri) as writer, tempfile.TemporaryDirectory() as tmp:
        for name, overrides in SMALL_TOOLS.items():
            tool, train, valid, refit_on = build_tool(name, overrides, synthetic_data)
            fit(tool, train, valid, refit_on=refit_on, holdout=lambda t, name=name: t.save(f"{tmp}/{name}/holdout"))
            tool.save(f"{tmp}/{name}")
            writer.add_tool(name, f"{tmp}/{name}", {}, tool.tasks)
        add_data_files(writer, synthetic_data, HorizonConfig())
        writer.update(primary={"sequential": "sasrec", "direct": "lightgcn", "ctr": "dcnv2"})
        writer.commit()
    return uri


def require_shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def vlm_bundle_uri(bundle_uri, synthetic_data, ray_session):
    """A copy of the tools bundle with a tiny VLM fine-tuned by ``finetune_vlm`` (Ray Train, a few steps)."""
    from reasonrec.vlm.build import TinyVLMConfig
    from reasonrec.vlm.examples import ExamplesConfig
    from reasonrec.train.vlm import finetune_vlm
    from reasonrec.vlm.finetune import FinetuneConfig

    uri = "s3://reasonrec-test/vlm/bundle"
    copy_files(bundle_uri, uri)
    # The demo's form (configs/demo_vlm.yaml): item tokens, listings over the tools' shortlist with new arrivals in
    # its last places, listwise loss.
    config = FinetuneConfig(steps=12, warmup_steps=4, batch_size=4, lr=3e-3, log_every=4, eval_users=12,
                            eval_task="sequential,direct", listwise_weight=1.0, distill=0.5,
                            tiny=TinyVLMConfig(vocab_size=1024, identity_values=True),
                            examples=ExamplesConfig(candidates=8, per_user=1, item_tokens=True,
                                                    candidates_from="shortlist", direct_form="listing",
                                                    random_share=0.3, arrivals=2))
    finetune_vlm(synthetic_data.uri, uri, config)
    return uri


@pytest.fixture(scope="session")
def byo_bundle(ray_session, bundle_uri, synthetic_data, tmp_path_factory):
    """``byo_bundle(architecture)``: a user's checkpoint of that architecture (a tiny random one built from
    transformers' config classes, ``save_pretrained``) on S3, tuned with LoRA through Ray Train into a copy of the
    tools bundle; returns (architecture, base URI, local copy of the base, bundle URI). Built once per architecture."""
    from reasonrec import storage
    from reasonrec.train.vlm import finetune_vlm
    from reasonrec.vlm.build import TinyVLMConfig, build_tiny, save
    from reasonrec.vlm.examples import ExamplesConfig
    from reasonrec.vlm.finetune import FinetuneConfig

    built = {}

    def get(architecture: str):
        if architecture not in built:
            local = tmp_path_factory.mktemp(f"base-{architecture}")
            save(*build_tiny(synthetic_data.table("items").column("title").to_pylist(),
                             TinyVLMConfig(vocab_size=1024, architecture=architecture)), local)
            base, bundle = f"s3://reasonrec-test/checkpoints/{architecture}", f"s3://reasonrec-test/byo/{architecture}"
            storage.upload_dir(local, base)
            copy_files(bundle_uri, bundle)
            config = FinetuneConfig(steps=6, batch_size=2, lora_rank=4, lr=1e-2, eval_users=0, checkpoint_every=0,
                                    log_every=3, examples=ExamplesConfig(candidates=4, per_user=1, max_history=3))
            finetune_vlm(synthetic_data.uri, bundle, config, base=base)
            built[architecture] = (architecture, base, local, bundle)
        return built[architecture]
    return get


def planner_score():
    """The nightly job's settings in the planner tests: a small shortlist, the transformers VLM backend on CPU (this
    machine has no GPU, and says so), one tool actor. The tests' jobs keep to one tool actor: on 2 cores each actor
    of a pool is another process start per job (the suite ran 20 min 40 s with the default two); the defaults run
    in the README, CLI, job-submit tests and the demo."""
    from reasonrec.batch.config import ScoreConfig
    from reasonrec.vlm.deliberator import DeliberatorConfig

    return ScoreConfig(batch_size=128, shortlist=8, tool_actors=1,
                       deliberator=DeliberatorConfig(backend="transformers", device="cpu", batch_size=16))


PLANNER_SCORE = planner_score()


@pytest.fixture(scope="session")
def planner_bundle_uri(vlm_bundle_uri, synthetic_data):
    from reasonrec.train.planner import FitPlannerConfig, fit_planner

    uri = "s3://reasonrec-test/planner/bundle"
    copy_files(vlm_bundle_uri, uri)
    fit_planner(synthetic_data.uri, uri, FitPlannerConfig(users=150, score=planner_score()))
    return uri


@pytest.fixture(scope="session")
def routed_bundle_uri(planner_bundle_uri):
    """The fitted bundle with hand-set thresholds, so that the job sees every route and path (the fitted plan on
    this small catalogue may send every row one way)."""
    from reasonrec import storage

    uri = "s3://reasonrec-test/planner/routed-bundle"
    copy_files(planner_bundle_uri, uri)
    manifest = storage.read_json(storage.join(uri, "manifest.json"))
    for task, policy in manifest["planner"]["policies"].items():
        policy.update(tau_low=0.3, tau_high=0.7, kappa=0.2, low="tool" if task == "sequential" else "vote")
    storage.write_json(storage.join(uri, "manifest.json"), manifest)
    return uri


