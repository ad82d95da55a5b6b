"""The S3 region comes from the AWS SDK's own chain, never forced by this code (issue 21 item 7).

Each case runs in a fresh interpreter: the SDK reads its config file once per process."""
import os
import subprocess
import sys

import pytest

CASES = [  # (variables, expected region)
    ({}, "eu-west-3"),  # the default profile's region
    ({"AWS_PROFILE": "batch"}, "ap-south-1"),
    ({"AWS_DEFAULT_REGION": "ca-central-1"}, "ca-central-1"),
    ({"AWS_DEFAULT_REGION": "ca-central-1", "AWS_REGION": "us-west-2"}, "us-west-2"),  # AWS_REGION wins
    ({"AWS_CONFIG_FILE": "/nonexistent/config"}, "us-east-1"),  # nothing configured: the SDK's default
]


@pytest.mark.parametrize("variables, expected", CASES)
def test_the_region_follows_the_sdk_chain(tmp_path, variables, expected):
    config = tmp_path / "config"
    config.write_text("[default]\nregion = eu-west-3\n[profile batch]\nregion = ap-south-1\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")}
    env.update({"AWS_CONFIG_FILE": str(config), "AWS_EC2_METADATA_DISABLED": "true", **variables})
    code = "from reasonrec import storage; print(storage.resolve('s3://bucket/key')[0].region)"
    found = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == expected
