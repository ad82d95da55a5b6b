import os
import socket
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Before anything starts Ray: local tests need no token auth, and S3 settings reach Ray workers via the env.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint on 127.0.0.1 (moto's threaded server) with a bucket ``reasonrec-test``."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="reasonrec-test")
    yield endpoint
    server.stop()


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
    synthetic.write(synthetic.SyntheticConfig(users=800, items=150, seed=3), str(out))
    return str(out)


@pytest.fixture(scope="session")
def synthetic_data(synthetic_raw, tmp_path_factory):
    from reasonrec.data import loaders, prepared

    out = str(tmp_path_factory.mktemp("prepared"))
    prepared.prepare(loaders.load(synthetic_raw, "parquet"), out)
    return prepared.PreparedData(out)


def require_shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA
