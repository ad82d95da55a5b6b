"""Storage failures from any verb: one line naming the URI, the endpoint and the cause, exit code 2; while the S3
client retries, one line says what it waits for. The endpoint is a closed port on 127.0.0.1: nothing answers."""
import pytest
from conftest import free_port

from jobs.cli import main
from reasonrec import storage


@pytest.fixture
def unreachable(monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")  # ~1 s of backoff instead of ~45 s
    # The retries' jittered backoff can end in well under 0.2 s (one run in ~60 did): 10 ms never misses them.
    monkeypatch.setattr(storage._waiting, "after_s", 0.01)
    monkeypatch.setattr(storage._waiting, "every_s", 0.0)
    return endpoint


@pytest.mark.parametrize("argv,uri", [
    (["score", "--requests", "s3://rr/requests", "--bundle", "s3://rr/bundle", "--output", "s3://rr/results"],
     "s3://rr/bundle/manifest.json"),
    (["evaluate", "--data", "s3://rr/data", "--results", "s3://rr/results", "--task", "sequential"],
     "s3://rr/data/meta.json"),
    (["requests", "--data", "s3://rr/data", "--out", "s3://rr/requests"], "s3://rr/data/meta.json"),
    (["fit-planner", "--data", "s3://rr/data", "--bundle", "s3://rr/bundle"], "s3://rr/data/meta.json"),
])
def test_an_unreachable_endpoint_is_one_line_and_exit_code_2(unreachable, capsys, argv, uri):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1, err
    assert err.startswith(f"reasonrec {argv[0]}: error: storage: cannot ") and uri in err
    assert f"endpoint {unreachable}" in err and "connect" in err.lower()
    waiting = [line for line in out.splitlines() if line.startswith("storage: still waiting")]
    assert len(waiting) == 1 and f"endpoint {unreachable}" in waiting[0] and "AWS_MAX_ATTEMPTS" in waiting[0]


def test_a_missing_file_stays_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(str(tmp_path / "nothing"))
    error = storage.StorageError("storage: cannot read x (local disk): gone")
    assert isinstance(error, OSError)
    import pickle

    assert str(pickle.loads(pickle.dumps(error))) == str(error)  # it crosses Ray's process boundaries intact


def test_the_waiting_line_follows_a_shorter_limit_set_while_its_thread_sleeps(caplog):
    """The line's thread, started under a long limit, sleeps up to 0.5 s at a time: a new operation wakes it, so an
    operation shorter than that sleep but longer than the current limit is still reported."""
    import logging
    import time

    waiting = storage._Waiting(after_s=10.0, every_s=0.0)
    with waiting.watch("read", "s3://rr/first"):  # starts the thread under the 10 s limit: it sleeps 0.5 s
        pass
    waiting.after_s = 0.02
    with caplog.at_level(logging.WARNING, logger="reasonrec.storage"):
        with waiting.watch("read", "s3://rr/second"):
            time.sleep(0.25)
    assert [r.getMessage() for r in caplog.records if "still waiting to read s3://rr/second" in r.getMessage()]
