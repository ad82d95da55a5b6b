"""prepare -> train-tools (Ray Train) -> evaluate, all through s3:// on a 127.0.0.1 S3 server."""
import json
from pathlib import Path

import pytest

from reasonrec import storage
from reasonrec.bundle import Bundle
from jobs.cli import main


def test_cli_end_to_end_on_s3(ray_session, s3_endpoint, synthetic_raw, tmp_path, capsys):
    data, bundle = "s3://reasonrec-test/pipeline/data", "s3://reasonrec-test/pipeline/bundle"
    assert main(["prepare", "--source", synthetic_raw, "--format", "parquet", "--out", data]) == 0
    assert storage.exists(storage.join(data, "meta.json"))

    config = tmp_path / "tools.yaml"
    config.write_text("cpus_per_worker: 0.5\noverrides:\n  sasrec: {epochs: 8}\n  bprmf: {epochs: 20}\n")
    assert main(["train-tools", "--data", data, "--bundle", bundle, "--tools", "sasrec,bprmf",
                 "--config", str(config)]) == 0
    manifest = Bundle(bundle).manifest
    assert sorted(manifest["tools"]) == ["bprmf", "sasrec"]
    assert {"tools/sasrec/model.safetensors", "tools/sasrec/config.json", "horizon.json",
            "vocab/items.json"} <= set(manifest["files"])

    from reasonrec.data.prepared import PreparedData
    from reasonrec.horizon import EvidenceHorizon

    horizon = EvidenceHorizon.from_json(Bundle(bundle).read("horizon.json"))
    train = PreparedData(data).train  # the histories the horizon was fitted on
    routes = horizon.route(horizon.apply(train.lengths, train.offsets, train.items))
    assert set(routes) == {"low", "medium", "high"}  # a long-tailed catalogue has all three risk levels

    out = "s3://reasonrec-test/pipeline/eval.json"
    assert main(["evaluate", "--data", data, "--bundle", bundle, "--task", "direct", "--json", out]) == 0
    report = json.loads(storage.read_bytes(out))
    assert report["task"] == "direct" and set(report["tools"]) == {"sasrec", "bprmf"}
    assert set(report["baselines"]) == {"popularity", "majority_vote"}
    for metrics in report["tools"].values():
        assert set(metrics) == {"HR@5", "NDCG@5", "HR@10", "NDCG@10"}
    assert report["tools"]["bprmf"]["HR@5"] > report["baselines"]["popularity"]["HR@5"]


def test_cli_reports_bad_input_clearly(tmp_path, capsys):
    (tmp_path / "seq.txt").write_text("1 2 3\n7 a 9\n")
    assert main(["prepare", "--source", str(tmp_path / "seq.txt"), "--format", "amazon-seq",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "seq.txt:2: id 'a' is not a non-negative integer" in err
    assert not (tmp_path / "out").exists()
    assert main(["evaluate", "--data", str(tmp_path / "nothing"), "--bundle", str(tmp_path / "b"),
                 "--task", "direct"]) == 2
    assert "not a prepared dataset" in capsys.readouterr().err


@pytest.mark.parametrize("uri", ["gs://bucket/x", "hdfs://x"])
def test_unsupported_scheme(uri):
    with pytest.raises(ValueError, match="unsupported storage URI scheme"):
        storage.resolve(uri)


def test_two_ddp_workers_train_on_fractional_cpus(ray_session, synthetic_data, tmp_path, monkeypatch):
    from reasonrec.train.tools import TrainToolsConfig, train_tools

    config = TrainToolsConfig(tools=("bprmf",), workers=2, cpus_per_worker=0.25, threads=1,
                              overrides={"bprmf": {"epochs": 10, "batch_size": 512}})
    # A relative data path must still resolve inside Ray workers, whose working directory differs.
    monkeypatch.chdir(Path(synthetic_data.uri).parent)
    manifest = train_tools(Path(synthetic_data.uri).name, str(tmp_path / "bundle"), config)
    assert manifest["tools"]["bprmf"]["metrics"]["epoch"] >= 5
    tool = Bundle(str(tmp_path / "bundle")).load_tool("bprmf")
    assert tool.n_items == synthetic_data.n_items


def test_train_tools_config_errors_name_the_field(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("overrides:\n  sasrec: {layerz: 3}\n")
    args = ["train-tools", "--data", str(tmp_path), "--bundle", str(tmp_path / "b"), "--config", str(config)]
    assert main(args) == 2
    assert "sasrec: unknown config field(s) ['layerz']" in capsys.readouterr().err
    config.write_text("tools: [sasrec, nope]\n")
    assert main(args) == 2
    assert "unknown tool 'nope'" in capsys.readouterr().err
