"""Every command the README quotes runs as written: `make test` and `make demo` in CI (.ci/run), the rest here, in a
folder laid out like the demo's output (this session's bundle and data under demo_output/)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, copy_files, free_port


BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.S)


def readme_blocks() -> list[tuple[str, str]]:
    return BLOCK.findall((REPO / "README.md").read_text())


def test_the_readme_is_a_front_door():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    for doc in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (REPO / doc).is_file(), doc
    for ran_by_ci in ("make demo", "make test"):
        assert ran_by_ci in text and ran_by_ci in (REPO / ".ci" / "run").read_text()
    # every measured figure lives in docs/results.md: no "ms", "users/s" or "HR@" number in the README itself
    assert not re.search(r"\d\s*(ms|users/s|req/s)\b|HR@\d+\s+0\.\d", text)


@pytest.fixture
def demo_output(planner_bundle_uri, synthetic_data, tmp_path):
    copy_files(planner_bundle_uri, str(tmp_path / "demo_output" / "bundle"))
    return tmp_path


def test_every_readme_command_runs(demo_output, ray_session):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO)}
    port = str(free_port())
    ran = 0
    for kind, code in readme_blocks():
        if kind == "bash" and code.lstrip().startswith("make "):
            continue  # the two set-up commands: CI runs them (.ci/run)
        code = code.replace("8000", port)
        command = ["bash", "-euo", "pipefail", "-c", code] if kind == "bash" else [sys.executable, "-c", code]
        # The job's blocks join this session's Ray, as `ray job submit` makes them join a cluster's (RAY_ADDRESS):
        # a second local Ray on 2 cores costs start-up time and nothing else. `reasonrec serve` starts its own, so
        # that its Serve instance is not this session's.
        joins = {} if "reasonrec serve" in code else {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
        done = subprocess.run(command, cwd=demo_output, env={**env, **joins}, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{code}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        ran += 1
        if "curl" in code:
            assert '"items"' in done.stdout and '"u000042"' in done.stdout, done.stdout[-1000:]
        if "duckdb" in code:
            assert "u000042" in done.stdout and "someone-new" in done.stdout
    assert ran >= 4
    assert (demo_output / "my_results" / "run_date=2026-12-01" / "_SUCCESS").exists()
