"""The README's submission path: `ray start --head`, then `ray job submit --working-dir . -- python jobs/...`, with
Ray's token auth on, as every manifest has it (a job server runs whatever code a caller submits)."""
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import free_port

from reasonrec.batch import commit
from reasonrec.batch.requests import requests_for_split, write_requests

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def head_node():
    """A separate local Ray head with its own temp dir (so no other ray.init() on this machine finds it) and token
    auth on; yields its address and the environment that carries the token."""
    temp_dir = tempfile.mkdtemp(prefix="rr-head-")  # short: Ray's unix socket paths must stay < 108 bytes
    token = Path(temp_dir, "auth_token")
    token.write_text(secrets.token_hex(16))
    with_token = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    port, dashboard = free_port(), free_port()
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dashboard}", "--num-cpus=2",
         "--include-dashboard=true", f"--temp-dir={temp_dir}", "--disable-usage-stats",
         # The test session's own Ray already holds the default agent ports.
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--metrics-export-port={free_port()}", f"--ray-client-server-port={free_port()}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        # As on a real node, `python` in a job's entrypoint is the environment Ray runs in.
        env={**with_token, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while subprocess.run([RAY, "job", "list", "--address", address], capture_output=True,
                         env=with_token).returncode != 0:
        assert time.time() < deadline and head.poll() is None, "ray start --head did not come up"
        time.sleep(2)
    yield address, with_token
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):  # `ray start --block` may ignore the first
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            break
        try:
            head.wait(wait)
        except subprocess.TimeoutExpired:
            pass
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_submission_without_the_token_is_refused(head_node):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address, _ = head_node
    assert os.environ["RAY_AUTH_MODE"] == "disabled"  # this process holds no token
    with pytest.raises(AuthenticationError, match="Authentication required"):
        JobSubmissionClient(address).submit_job(entrypoint="echo anyone")
    refused = subprocess.run([RAY, "job", "submit", "--address", address, "--", "echo", "anyone"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "Authentication" in refused.stdout + refused.stderr


def test_ray_job_submit_runs_the_nightly_job(head_node, synthetic_data, bundle_uri, tmp_path):
    head_node, with_token = head_node
    requests, output = str(tmp_path / "requests"), "s3://reasonrec-test/submitted/results"
    write_requests(requests_for_split(synthetic_data, "test", "sequential", k=5), requests, shard_rows=300)
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    runtime_env = '{"env_vars": %s}' % __import__("json").dumps(env)
    command = [RAY, "job", "submit", "--address", head_node, "--working-dir", ".", "--runtime-env-json", runtime_env,
               "--", "python", "jobs/nightly_score.py", "--requests", requests, "--bundle", bundle_uri,
               "--output", output, "--run-date", "2026-11-28", "--mode", "tools-only"]
    for _ in range(10):  # the head's job agent comes up a little after its HTTP server
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=420, env=with_token)
        if "No available agent" not in done.stderr:
            break
        time.sleep(2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout + done.stderr
    manifest = commit.committed_run(output, "2026-11-28")
    assert manifest["rows_out"] == len(synthetic_data.table("test")) and manifest["rows_quarantined"] == 0
