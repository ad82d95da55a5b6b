import numpy as np
import pytest
import torch

from reasonrec.evaluator import evaluate, majority_vote, tool_scorer
from reasonrec.scores import top_k
from reasonrec.tools import REGISTRY, Tool, exclude_seen, make_config, tool_class
from reasonrec.train.loop import fit

SMALL_DATA = {"sasrec": {"batch_size": 64, "lr": 3e-3, "dropout": 0.3}, "gru4rec": {"batch_size": 64, "lr": 3e-3},
              "lightsans": {"batch_size": 64, "lr": 3e-3, "dropout": 0.3},
              "nextitnet": {"batch_size": 64, "lr": 3e-3}, "bprmf": {"batch_size": 512},
              "lightgcn": {"batch_size": 512}}
# Each tool must beat popularity on the task it is built for.
TASK_OF = {"sasrec": "sequential", "gru4rec": "sequential", "lightsans": "sequential", "nextitnet": "sequential",
           "bprmf": "direct", "lightgcn": "direct"}


@pytest.fixture(scope="module")
def trained(synthetic_data):
    torch.set_num_threads(2)
    tools = {}
    for name in ["pop", *TASK_OF]:
        overrides = {"epochs": 30, "patience": 3, **SMALL_DATA[name]} if name != "pop" else None
        tool = tool_class(name)(make_config(name, overrides), synthetic_data.n_items,
                                synthetic_data.train.user_ids)
        fit(tool, synthetic_data.train, synthetic_data.eval_set("valid"), refit_on=synthetic_data.train_and_valid)
        tools[name] = tool
    return tools


def test_registry_has_the_required_tools():
    assert {"sasrec", "gru4rec", "lightsans", "nextitnet", "bprmf", "lightgcn", "pop"} <= set(REGISTRY)
    with pytest.raises(ValueError, match="unknown tool 'nope'"):
        tool_class("nope")
    with pytest.raises(ValueError, match="unknown config field"):
        make_config("sasrec", {"layerz": 3})


@pytest.mark.parametrize("name", list(TASK_OF))
def test_tool_beats_popularity(trained, synthetic_data, name):
    test = synthetic_data.eval_set("test")
    task = TASK_OF[name]
    mine = evaluate(tool_scorer(trained[name]), test, task)
    pop = evaluate(tool_scorer(trained["pop"]), test, task)
    assert mine["NDCG@10"] > pop["NDCG@10"] * 1.1, (name, mine, pop)


@pytest.mark.parametrize("name", ["pop", *TASK_OF])
def test_save_load_round_trip(trained, synthetic_data, tmp_path, name):
    tool = trained[name]
    tool.save(tmp_path)
    again = Tool.load(tmp_path)
    history = synthetic_data.eval_set("test").history.select(np.arange(20))
    with torch.no_grad():
        assert torch.allclose(tool.score(history), again.score(history))


def test_scores_are_full_catalogue_and_history_is_excluded(trained, synthetic_data):
    history = synthetic_data.eval_set("test").history.select(np.arange(8))
    scores = exclude_seen(trained["sasrec"].score(history), history)
    assert scores.shape == (8, synthetic_data.n_items + 1)
    assert torch.isinf(scores[:, 0]).all()
    rows = np.repeat(np.arange(8), history.lengths)
    assert torch.isinf(scores[rows, history.items]).all()


@pytest.mark.parametrize("rows,width,k", [(173, 12102, 10), (40, 12102, 20), (9, 1281, 10), (5, 1280, 10),
                                           (6, 3000, 1), (4, 300, 10), (3, 40, 50)])
def test_top_k_is_torchs_topk(rows, width, k):
    """The grouped top-k (reasonrec.scores.top_k) against torch.topk: the groups' boundary cases (a partial last
    round of groups, exactly two rounds, too narrow for groups, k past the width) and rows mostly masked out."""
    generator = torch.Generator().manual_seed(rows * width + k)
    scores = torch.randn(rows, width, generator=generator)
    scores[0, : width - 3] = float("-inf")  # fewer finite scores than k: those are found, the rest is -inf
    scores[1, 1::2] = float("-inf")
    scores[:, 0] = float("-inf")
    values, items = top_k(scores, k)
    expected, at = scores.topk(min(k, width), dim=1)
    finite = torch.isfinite(values)
    assert torch.equal(values, expected) and finite[0].sum() == min(3, k)
    assert torch.equal(items[finite], at[finite])  # random scores never tie
    assert torch.equal(scores.gather(1, items)[finite], values[finite]) and ((items >= 0) & (items < width)).all()


@pytest.mark.parametrize("name", ["pop", *TASK_OF])
def test_a_users_scores_do_not_depend_on_who_else_is_in_the_batch(trained, synthetic_data, name):
    """Left padding to the batch's longest history must not reach a user's scores (GRU4Rec once read it)."""
    history = synthetic_data.eval_set("test").history
    rows = np.argsort(history.lengths)[[0, 1, 2, -1]]  # short histories, then the longest
    with torch.no_grad():
        together = trained[name].score(history.select(rows))
        for i, row in enumerate(rows[:3]):
            alone = trained[name].score(history.select(np.array([row])))
            assert torch.allclose(alone[0], together[i], atol=1e-4), (name, row)


@pytest.mark.parametrize("name", [n for n, task in TASK_OF.items() if task == "sequential"])
def test_scoring_shortcuts_give_the_full_grid_scores(trained, synthetic_data, name):
    """Scoring sorts users into length chunks and reads only the last position (issue 23): the scores must be those
    of every user padded to max_len and encoded at every position, and the top 10 the same."""
    tool, history = trained[name], synthetic_data.eval_set("test").history
    with torch.no_grad():
        grid = torch.from_numpy(history.padded(np.arange(len(history)), tool.config.max_len))
        grid = torch.cat([torch.zeros(len(history), tool.config.max_len - grid.shape[1], dtype=grid.dtype), grid], 1)
        full = tool.encode(grid)[:, -1] @ tool.item_table().T
        fast = tool.score(history)
    assert fast.shape == full.shape
    assert torch.allclose(fast, full, atol=1e-5), (fast - full).abs().max()
    top_fast, top_full = (exclude_seen(s, history).topk(10, dim=1).indices for s in (fast, full))
    assert (top_fast == top_full).float().mean() > 0.999


@pytest.mark.parametrize("length", [1, 3, 9, 20])
def test_nextitnet_causal_convolution_is_conv1d_over_the_left_padded_sequence(length):
    """NextItNet convolves by one matmul over every tap and shifted sums (issue 23): the same as nn.Conv1d over the
    input padded on the left by its reach, also where a tap reaches past the start of a short sequence."""
    from reasonrec.tools.nextitnet import ResidualBlock

    torch.manual_seed(0)
    block = ResidualBlock(dim=16, kernel=3, dilation=4, dropout=0.0)
    x = torch.randn(5, length, 16)
    for conv in (block.conv1, block.conv2):
        reach = 2 * conv.dilation[0]
        expected = conv(torch.nn.functional.pad(x.transpose(1, 2), (reach, 0))).transpose(1, 2)
        assert torch.allclose(block.causal(conv, x), expected, atol=1e-5)


def test_unknown_user_gets_a_finite_score(trained, synthetic_data):
    history = synthetic_data.eval_set("test").history.select(np.arange(2))
    history.user_ids = np.array(["never-seen", "also-new"], dtype=object)
    for name in ("bprmf", "lightgcn"):
        assert torch.isfinite(trained[name].score(history)[:, 1:]).all()


def test_majority_vote_is_the_mean_of_normalised_scores(trained, synthetic_data):
    history = synthetic_data.eval_set("test").history.select(np.arange(4))
    vote = majority_vote([trained["sasrec"], trained["bprmf"]])(history)
    assert vote.shape == (4, synthetic_data.n_items + 1)
    assert float(vote.min()) >= 0.0 and float(vote.max()) <= 1.0


@pytest.mark.parametrize("name", ["bprmf", "lightgcn"])
def test_a_tool_trained_twice_from_its_seed_is_the_same_tool(synthetic_data, name):
    """Embedding gradients summed in thread order made two trainings of these differ in the last bits (up to
    5e-6), and the planner fitted on their scores moved between demo runs: training uses deterministic kernels."""
    from reasonrec.train.tools import build_tool

    states = []
    for _ in range(2):
        tool, train, valid, refit_on = build_tool(name, {"epochs": 2}, synthetic_data)
        fit(tool, train, valid, refit_on=refit_on)
        states.append(tool.state_dict())
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
    assert not torch.are_deterministic_algorithms_enabled()  # the process's own setting is given back


@pytest.mark.parametrize("name", ["sasrec", "dcnv2"])
def test_a_tool_starts_from_its_seed_whatever_the_process_drew_before(synthetic_data, name):
    """Ray Train workers build each tool in a process with its own history of random draws: the initial weights
    must follow the tool's seed alone (the demo's tools once differed from run to run), and building one must not
    reseed the process."""
    from reasonrec.train.tools import build_tool

    torch.manual_seed(1)
    first = build_tool(name, {}, synthetic_data)[0].state_dict()
    torch.manual_seed(2)
    torch.rand(5)
    state = torch.random.get_rng_state()
    second = build_tool(name, {}, synthetic_data)[0].state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(first[key], second[key]) for key in first)
