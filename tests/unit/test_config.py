"""Typed configs from YAML + flags, and the command line's promise: a mistake is one line naming the file, the key
path and what was expected, with exit code 2; every verb documents itself."""
import importlib

import pytest

from jobs.cli import VERBS, build_parser, main
from reasonrec.batch.config import ScoreConfig
from reasonrec.config import ConfigError, load
from reasonrec.train.tools import TrainToolsConfig


def test_yaml_then_dotted_flags_build_one_typed_object(tmp_path):
    path = tmp_path / "score.yaml"
    path.write_text("batch_size: 256\ndeliberator: {backend: transformers, batch_size: 4}\ntools: [sasrec, bprmf]\n")
    config = load(ScoreConfig, str(path), {"batch_size": 64, "mode": None, "deliberator.threads": 1})
    assert config.batch_size == 64 and config.mode == "planner"  # None: the flag was not given
    assert (config.deliberator.backend, config.deliberator.batch_size, config.deliberator.threads) == \
        ("transformers", 4, 1)
    assert config.tools == ("sasrec", "bprmf")


@pytest.mark.parametrize("text,expected", [
    ("batch_size: big\n", "score.yaml: batch_size: expected a valid integer, unable to parse string as an integer "
                          "(type int), got 'big'"),
    ("deliberator: {batch_size: [1]}\n", "score.yaml: deliberator.batch_size: expected a valid integer"),
    ("deliberator: {bakend: vllm}\n", "score.yaml: deliberator.bakend: unknown key (known keys of DeliberatorConfig: "
                                      "backend, batch_size"),
    ("mode: sometimes\n", "score.yaml: ScoreConfig: ScoreConfig.mode 'sometimes': use one of"),
    ("tools: sasrec\n", "score.yaml: tools: expected a valid tuple"),
    ("batch_size: [1,\n", "score.yaml: YAML syntax error at line 2, column 1"),
    ("- just\n- a list\n", "score.yaml: expected a mapping of keys at the top level, got list"),
])
def test_a_bad_value_names_the_file_the_key_path_and_the_type(tmp_path, text, expected):
    path = tmp_path / "score.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load(ScoreConfig, str(path))
    assert str(error.value).replace(str(tmp_path) + "/", "").startswith(expected), str(error.value)


def test_the_command_line_says_it_in_one_line_with_exit_code_2(tmp_path, capsys):
    path = tmp_path / "score.yaml"
    path.write_text('batch_size: "big"\n')
    code = main(["score", "--requests", "r", "--bundle", "b", "--output", "o", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"reasonrec score: error: {path}: batch_size: expected a valid integer") and "'big'" in err
    path.write_text("overrides:\n  sasrec: {layerz: 3}\n")  # a tool's own config, checked by its dataclass
    assert main(["train-tools", "--data", "d", "--bundle", "b", "--config", str(path)]) == 2
    assert "sasrec: unknown config field(s) ['layerz']" in capsys.readouterr().err
    assert main(["score", "--requests", "r", "--bundle", "b", "--output", "o", "--config", str(tmp_path / "no")]) == 2
    assert "cannot read the config file" in capsys.readouterr().err


def test_tool_overrides_and_flags_reach_the_config():
    from jobs import train_tools

    args = build_parser().parse_args(["train-tools", "--data", "d", "--bundle", "b", "--tools", "sasrec,bprmf",
                                      "--epochs", "3", "--workers", "2"])
    job = train_tools.config(args)
    assert isinstance(job.tools, TrainToolsConfig) and job.tools.workers == 2
    assert job.tools.overrides == {"sasrec": {"epochs": 3}, "bprmf": {"epochs": 3}}


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_has_a_description_and_shows_its_defaults(verb, capsys):
    with pytest.raises(SystemExit) as done:
        main([verb, "--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0 and f"usage: reasonrec {verb}" in text
    description = text.split("\n\n")[1]
    assert len(description) > 40 and "(default: None)" not in text
    assert "default" in text  # every verb has at least one flag with a default or a config default it names


def test_version(capsys):
    import reasonrec

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"reasonrec {reasonrec.__version__}"


@pytest.mark.parametrize("fields, gpus", [({}, 1.0), ({"device": "cpu"}, 0.0), ({"num_gpus": 0.5}, 0.5),
                                          ({"device": "cpu", "num_gpus": 1}, 1)])
def test_vlm_actors_ask_for_the_gpus_their_config_names(fields, gpus):
    from reasonrec.vlm.deliberator import DeliberatorConfig

    # From config alone (a GPU group at zero workers shows no GPU when the job starts).
    assert DeliberatorConfig(**fields).resources() == {"num_cpus": 0.5, "num_gpus": gpus}


def test_an_unknown_vlm_device_is_refused():
    from reasonrec.vlm.deliberator import DeliberatorConfig

    with pytest.raises(ValueError, match="deliberator device 'gpu'"):
        DeliberatorConfig(device="gpu")


def test_the_vlm_device_flag_reaches_every_verb_that_runs_the_vlm():
    parser = build_parser()
    for verb, base in (("score", ["--requests", "r", "--bundle", "b", "--output", "o"]),
                       ("serve", ["--bundle", "b"]), ("fit-planner", ["--data", "d", "--bundle", "b"])):
        args = parser.parse_args([verb, *base, "--vlm-device", "cpu"])
        job = importlib.import_module(VERBS[verb]).config(args)
        score = {"score": lambda: job.score, "serve": lambda: job.serve.score,
                 "fit-planner": lambda: job.planner.score}[verb]()
        assert score.deliberator.device == "cpu", verb
