"""R-VIT examples (paper §3.2, Appendix A): prompts with their deliberation context and the answer to learn.

The history is what the user bought before the target item (train: up to ``per_user`` examples per user, each of the
last training items after its prefix; valid/test: one per user, the evaluation protocol's history), the positive is
the target. Candidates (``candidates_from``) are either what the nightly job and Serve list, the tools' shortlist
(``shortlist``: the Majority Vote's top N over the catalogue for sequential, over a sampled pool for direct, in the
user's seeded ``listing_order``; a training target the shortlist misses is no example, as the VLM is never asked
to find it there), or the positive and random items the user has not bought (``random``: the held-out HR@1 the
demo reports). They are listed under single-token labels, or under their own item tokens when the model has them
(``item_tokens``). ``teacher`` is the vote's score of each listed candidate (the distillation target).
Tool outputs are computed by the bundle's tools on the same history; whether a tool named the positive is the
tool-usability label (``usable``: the tools whose clean output was right). A configurable share of tool outputs
is replaced by a random other answer than the tool's, so that the model learns when to override a tool.

The decision follows the evidence horizon: low -> delegate to the primary tool, medium -> answer, high -> consult
all tools. ``decision="answer"`` builds VLM-alone prompts (no tool outputs) for evaluation and ablations.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from reasonrec.arrivals import Arrivals, first_bought, with_arrivals
from reasonrec.data.prepared import PreparedData, Sequences
from reasonrec.horizon import EvidenceHorizon
from reasonrec.prompts.catalogue import Catalogue, explain_prompt, listing_order
from reasonrec.prompts.cot import Deliberation, format_context
from reasonrec.prompts.templates import LABELS, render, templates_for, warmup_template

TASKS = ("sequential", "direct", "ctr", "explain")
DECISIONS = ("delegate", "answer", "consult")


@dataclasses.dataclass
class ExamplesConfig:
    candidates: int = 20  # listed candidates per sequential prompt, one of them the positive
    max_history: int = 5  # most recent items shown in the prompt
    per_user: int = 3  # training examples per user: each of the last items of the training sequence as a target
    task_shares: dict = dataclasses.field(
        default_factory=lambda: {"sequential": 0.6, "direct": 0.15, "ctr": 0.15, "explain": 0.1})
    tools: tuple[str, ...] = ()  # consulted tools; empty: every tool in the bundle
    primary: str = "sasrec"  # the tool a low-risk user is delegated to
    noise: float = 0.2  # share of tool outputs replaced by a random other answer
    images: bool = True  # show item images when the catalogue has them
    decision: str | None = None  # "answer": every example is the VLM judging alone; None: as the horizon routes
    repeats: int = 1  # draws per (user, target), each with its own candidates and asked item
    candidates_from: str = "random"  # "shortlist": the tools' top N, as served; "random": positive + random items
    # Direct with candidates_from shortlist: the training pool the vote shortlists from (the positive and random
    # unseen items); None: as many as the prepared direct requests carry. Valid/test use the split's own.
    pool: int | None = None
    # With candidates_from shortlist: the share of listing examples over random candidates instead. The shortlist's
    # negatives are all like the history; the random ones keep the coarse signal (popularity, category) learned.
    random_share: float = 0.0
    # With candidates_from shortlist: the listing's last places given to new arrivals in the user's categories
    # instead of the vote's items there (reasonrec.arrivals), as the tool stage lists them for a VLM tuned so.
    arrivals: int = 0
    # Each such listing whose answer is a new arrival counts this many times: the training log ends before most
    # arrivals are bought, so they are rare targets in it and common ones in the weeks it is scored on.
    arrival_repeats: int = 1
    item_tokens: bool = False  # items written (and listings answered) as their own tokens
    direct_form: str = "yes_no"  # "listing": a direct user is one prompt over its candidates, like sequential
    seed: int = 0

    def __post_init__(self):
        if not 2 <= self.candidates <= len(LABELS):
            raise ValueError(f"candidates must be in [2, {len(LABELS)}], got {self.candidates}")
        unknown = set(self.task_shares) - set(TASKS)
        if unknown or not sum(self.task_shares.values()) > 0:
            raise ValueError(f"task_shares: unknown tasks {sorted(unknown)} or no positive share; tasks are {TASKS}")
        if not 0 <= self.random_share <= 1:
            raise ValueError(f"random_share must be in [0, 1], got {self.random_share}")
        if not 0 <= self.arrivals < self.candidates:
            raise ValueError(f"arrivals must be in [0, candidates={self.candidates}), got {self.arrivals}")
        if self.arrival_repeats < 1:
            raise ValueError(f"arrival_repeats must be >= 1, got {self.arrival_repeats}")
        if not 0 <= self.noise <= 1:
            raise ValueError(f"noise must be in [0, 1], got {self.noise}")
        if self.decision not in (None, *DECISIONS):
            raise ValueError(f"decision must be one of {DECISIONS} or null, got {self.decision!r}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.direct_form not in ("yes_no", "listing"):
            raise ValueError(f"direct_form must be 'yes_no' or 'listing', got {self.direct_form!r}")
        if self.candidates_from not in ("random", "shortlist"):
            raise ValueError(f"candidates_from must be 'random' or 'shortlist', got {self.candidates_from!r}")


SCHEMA = pa.schema([
    ("user_id", pa.string()), ("task", pa.string()), ("template_id", pa.string()), ("horizon", pa.float32()),
    ("level", pa.string()), ("decision", pa.string()), ("prompt", pa.string()), ("images", pa.list_(pa.string())),
    ("labels", pa.list_(pa.string())), ("candidates", pa.list_(pa.string())), ("answer", pa.string()),
    ("context", pa.string()), ("tools", pa.list_(pa.string())), ("tool_outputs", pa.list_(pa.string())),
    ("usable", pa.list_(pa.string())), ("noisy", pa.list_(pa.bool_())), ("teacher", pa.list_(pa.float32())),
])


def split_history(data: PreparedData, split: str, per_user: int = 1) -> tuple[Sequences, np.ndarray]:
    """(history, target item) rows: train = each of a user's last ``per_user`` training items after its prefix;
    valid/test = the evaluation protocol (one row per user)."""
    if split != "train":
        evaluation = data.eval_set(split)
        return evaluation.history, evaluation.target
    train = data.train
    # Targets at positions max(1, L - per_user) .. L - 1 of each sequence; the history is everything before.
    firsts = np.maximum(1, train.lengths - per_user)
    counts = np.maximum(train.lengths - firsts, 0)
    user = np.repeat(np.arange(len(train)), counts)
    position = np.repeat(firsts, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    offsets = np.concatenate([[0], np.cumsum(position)])
    starts = np.repeat(train.offsets[user], position)
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], position)
    history = Sequences(train.user_ids[user], offsets, train.items[starts + within])
    return history, train.items[train.offsets[user] + position]


def sample_candidates(history: Sequences, target: np.ndarray, n_items: int, n: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(U, n) item indices with the positive at a random position, negatives unseen and distinct; positions."""
    users = len(target)
    if n - 1 > n_items - 1 - history.lengths.max(initial=0):
        raise ValueError(f"catalogue of {n_items} items is too small for {n} candidates beside a history of "
                         f"{history.lengths.max(initial=0)} items")
    seen = np.unique(np.repeat(np.arange(users), history.lengths) * (n_items + 1) + history.items)
    negatives = np.zeros((users, n - 1), dtype=np.int64)
    todo = np.arange(users)
    while len(todo):
        draw = rng.integers(1, n_items + 1, size=(len(todo), 3 * n))
        ordered = np.sort(draw, axis=1)
        repeated = np.zeros_like(draw, dtype=bool)
        repeated[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        # Map the sorted-duplicate mask back to draw order: keep the first occurrence of each value.
        order = np.argsort(draw, axis=1, kind="stable")
        duplicate = np.zeros_like(repeated)
        np.put_along_axis(duplicate, order, repeated, axis=1)
        pair = todo[:, None] * (n_items + 1) + draw
        bad = duplicate | (draw == target[todo, None]) | np.isin(pair, seen)
        enough = (~bad).sum(axis=1) >= n - 1
        picked = np.argsort(bad, axis=1, kind="stable")[:, :n - 1]
        negatives[todo[enough]] = np.take_along_axis(draw, picked, axis=1)[enough]
        todo = todo[~enough]
    position = rng.integers(0, n, size=users)
    out = np.empty((users, n), dtype=np.int64)
    slots = np.arange(n)[None, :]
    neg_col = slots - (slots > position[:, None])
    out[:] = np.take_along_axis(negatives, np.clip(neg_col, 0, n - 2), axis=1)
    out[slots == position[:, None]] = target
    return out, position


def tool_rankings(tools: dict, history: Sequences, candidates: np.ndarray, chunk: int = 2048) -> dict[str, np.ndarray]:
    """Per tool, (U, n) candidate positions ordered best first."""
    import torch

    out = {}
    for name, tool in tools.items():
        ranks = []
        for lo in range(0, len(history), chunk):
            rows = np.arange(lo, min(lo + chunk, len(history)))
            with torch.no_grad():
                scores = tool.score(history.select(rows)).float()
            picked = torch.gather(scores, 1, torch.from_numpy(candidates[rows]))
            ranks.append(torch.argsort(picked, dim=1, descending=True, stable=True).numpy())
        out[name] = np.concatenate(ranks) if ranks else np.zeros((0, candidates.shape[1]), dtype=np.int64)
    return out


def _votes(tools: dict, history: Sequences, chunk: int = 2048):
    """The Majority Vote of ``tools`` over the catalogue (as the tool stage computes it), per chunk of users:
    (first row, the chunk's histories, (rows, items) vote)."""
    import torch

    from reasonrec.scores import majority_vote

    for lo in range(0, len(history), chunk):
        rows = history.select(np.arange(lo, min(lo + chunk, len(history))))
        with torch.no_grad():
            yield lo, rows, majority_vote([tool.score(rows).float() for tool in tools.values()])


def vote_scores(tools: dict, history: Sequences, candidates: np.ndarray) -> np.ndarray:
    """(U, n) the vote's scores of each row's candidates."""
    parts = [np.take_along_axis(vote.numpy(), candidates[lo:lo + len(rows)], axis=1)
             for lo, rows, vote in _votes(tools, history)]
    return np.concatenate(parts) if parts else np.zeros(candidates.shape, dtype=np.float32)


def listed_shortlists(tools, history, target, pool, config, arrivals=None) -> tuple[dict, dict]:
    """Per listing task, the (U, n) shortlist the tool stage hands the VLM stage (the vote's top n, over the catalogue
    without the history for sequential, over each row's ``pool`` for direct; its last ``config.arrivals`` places
    given to ``arrivals``' picks), in each user's listing order, and the positive's position (-1: the shortlist
    misses it). One vote per user serves both tasks."""
    from reasonrec.tools.base import exclude_seen

    n = config.candidates
    short = {"sequential": [], "direct": []}
    for lo, rows, vote in _votes(tools, history):
        rows_pool = pool[lo:lo + len(rows)]
        picked = np.take_along_axis(vote.numpy(), np.maximum(rows_pool, 0), axis=1)
        picked = np.where(rows_pool > 0, picked, -np.inf)  # padding of a short candidate list
        top = np.argsort(-picked, axis=1, kind="stable")[:, :n]
        short["direct"].append(np.take_along_axis(rows_pool, top, axis=1))
        # A copy: the slice of a view would keep every chunk's whole (users x catalogue) ordering alive.
        short["sequential"].append(np.argsort(-exclude_seen(vote, rows).numpy(), axis=1, kind="stable")[:, :n].copy())
        if arrivals is not None and config.arrivals:
            f = config.arrivals
            for task, among in (("direct", rows_pool), ("sequential", None)):
                short[task][-1] = with_arrivals(short[task][-1], arrivals.pick(rows, f, short[task][-1], among))
    order = np.stack([listing_order(str(u), n) for u in history.user_ids])
    listed, found = {}, {}
    for task, parts in short.items():
        listed[task] = np.take_along_axis(np.concatenate(parts), order, axis=1)
        hit = listed[task] == target[:, None]
        found[task] = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    return listed, found


def build_examples(data: PreparedData, split: str, horizon: EvidenceHorizon, tools: dict, config: ExamplesConfig,
                   decision: str | None = None, tasks: dict | None = None, every_candidate: bool = False,
                   keep: np.ndarray | None = None, warmup: bool = False) -> pa.Table:
    """R-VIT examples for every user of ``split``, ``config.repeats`` draws each; ``decision`` (else
    ``config.decision``) overrides the horizon's choice for all of them.

    ``every_candidate``: a yes/no (direct, CTR) user gets one row per candidate, in candidate order, so that the
    candidates can be ranked by P(yes) (DESIGN.md §5). ``keep``: row numbers of the split's users to keep.
    ``warmup``: the short warm-up form of each task (``warmup_template``), without the deliberation lines.
    """
    shares = dict(tasks or config.task_shares)
    reviews = data.explain_rows(split)[0].num_rows if shares.get("explain") else 0
    # Real reviews replace the made-up explanations (of data without reviews); the warm-up's short forms have none.
    explain_share = shares.pop("explain") if reviews else 0
    draws = [_build(data, split, horizon, tools, dataclasses.replace(config, seed=config.seed + k),
                    decision or config.decision, shares, every_candidate, keep, warmup)
             for k in range(config.repeats)] if sum(shares.values()) > 0 else []
    ranked = sum(d.num_rows for d in draws)
    if explain_share and not warmup:
        wanted = round(ranked * explain_share / sum(shares.values())) if ranked else reviews * config.repeats
        draws.append(explain_examples(data, split, config, wanted))
    return pa.concat_tables(draws) if draws else SCHEMA.empty_table()


def explain_examples(data: PreparedData, split: str, config: ExamplesConfig, n: int) -> pa.Table:
    """``n`` explanation examples from the split's reviews (``reasonrec.data.explain``; each review once before
    any repeats, in a seeded order): the prompt the VLM stage builds for an explain request, the review as the
    answer."""
    rows, history = data.explain_rows(split)
    rng = np.random.default_rng([config.seed, 4])
    order = np.concatenate([rng.permutation(rows.num_rows) for _ in range(-(-n // max(rows.num_rows, 1)))])[:n]
    catalogue = Catalogue(data.table("items"), data.item_vocab, images=config.images, item_tokens=config.item_tokens)
    forms = templates_for("explain")
    item_ids = rows.column("item_id").to_numpy(zero_copy_only=False)
    items = data.item_vocab.index(item_ids)
    users = rows.column("user_id").to_numpy(zero_copy_only=False)
    ratings = rows.column("rating").to_numpy()
    reviews = rows.column("review").to_numpy(zero_copy_only=False)
    out = {name: [] for name in SCHEMA.names}
    for r, form in zip(order, rng.integers(0, len(forms), len(order))):  # string rendering: per example
        h = history.items[history.offsets[r]:history.offsets[r + 1]]
        row = explain_prompt(catalogue, forms[form], str(users[r]), h, items[r], round(float(ratings[r])),
                             config.max_history)
        for name, value in (("user_id", row["user_id"]), ("task", "explain"), ("template_id", row["template_id"]),
                            ("horizon", float("nan")), ("level", ""), ("decision", "answer"),
                            ("prompt", row["prompt"]), ("images", row["images"]), ("labels", []),
                            ("candidates", [item_ids[r]]), ("answer", reviews[r]),
                            ("context", row["context"]), ("tools", []), ("tool_outputs", []), ("usable", []),
                            ("noisy", []), ("teacher", [])):
            out[name].append(value)
    return pa.table(out, schema=SCHEMA)


def _build(data, split, horizon, tools, config, decision, tasks, every_candidate, keep, warmup) -> pa.Table:
    rng = np.random.default_rng(config.seed)
    history, target = split_history(data, split, config.per_user)
    if keep is not None:
        history, target = history.select(np.asarray(keep)), target[np.asarray(keep)]
    users = len(target)
    names = list(tools)
    shares = tasks or config.task_shares
    task_names = list(shares)
    p = np.array([shares[t] for t in task_names], dtype=float)
    task = np.array(task_names)[rng.choice(len(task_names), size=users, p=p / p.sum())]
    candidates, position = sample_candidates(history, target, data.n_items, config.candidates, rng)
    # Direct is listed like sequential (one prompt, a label per candidate) unless it is asked yes/no per candidate.
    listing = (task == "sequential") | ((task == "direct") & (config.direct_form == "listing"))
    if config.candidates_from == "shortlist" and names and users:
        arrivals = Arrivals(data.table("items"), first_bought(data.table("train")), data.item_vocab) \
            if config.arrivals else None
        listed, found = listed_shortlists(tools, history, target, _direct_pool(data, split, history, target, keep,
                                                                               config, rng), config, arrivals)
        shortlisted = rng.random(users) >= config.random_share
        for t in ("sequential", "direct"):
            rows = (task == t) & shortlisted
            candidates[rows], position[rows] = listed[t][rows], found[t][rows]
        kept = np.flatnonzero(~listing | (position >= 0))  # a target the shortlist misses: nothing to learn
        if arrivals is not None and config.arrival_repeats > 1:
            arrived = kept[(listing & shortlisted & (arrivals.position[target] >= 0))[kept]]
            kept = np.sort(np.concatenate([kept, np.repeat(arrived, config.arrival_repeats - 1)]))
        history, target, task, candidates, position, listing = (
            history.select(kept), target[kept], task[kept], candidates[kept], position[kept], listing[kept])
        users = len(target)
    c = horizon.apply(history.lengths, history.offsets, history.items)
    levels = horizon.route(c)
    rankings = tool_rankings(tools, history, candidates)
    teacher = vote_scores(tools, history, candidates) if names and users else np.zeros(candidates.shape, np.float32)
    # yes/no tasks ask about one candidate: the positive half of the time.
    asked = np.where(rng.random(users) < 0.5, position, rng.integers(0, config.candidates, users))
    noisy = rng.random((users, len(names))) < config.noise
    other = rng.integers(1, config.candidates, (users, len(names)))  # a noisy output: another candidate
    catalogue = Catalogue(data.table("items"), data.item_vocab, images=config.images,
                          item_tokens=config.item_tokens)
    forms = {(t, is_listing): (warmup_template("sequential" if is_listing else t),) if warmup else templates_for(
        t, is_listing if t in ("direct", "sequential") else None) for t in task_names for is_listing in (False, True)
        if t != "sequential" or is_listing}
    template_pick = rng.integers(0, 10, users)

    rows = {name: [] for name in SCHEMA.names}
    yes_no = ~listing & np.isin(task, ["direct", "ctr"])
    per_user = np.where(yes_no & every_candidate, config.candidates, 1)
    example_user = np.repeat(np.arange(users), per_user)
    example_asked = np.where(np.repeat(per_user, per_user) > 1,
                             np.arange(per_user.sum()) - np.repeat(np.cumsum(per_user) - per_user, per_user),
                             asked[example_user])
    for u, a in zip(example_user, example_asked):  # string rendering: per example, done once per training set
        h = history.items[history.offsets[u]:history.offsets[u + 1]]
        shown = h[-config.max_history:]
        t = task[u]
        options = forms[(t, bool(listing[u]))]
        template = options[template_pick[u] % len(options)]
        listed = candidates[u] if listing[u] else candidates[u, a:a + 1] if yes_no[u] else np.array([target[u]])
        labels = [catalogue.items[i].token or label for i, label in zip(candidates[u], LABELS)]
        if listing[u]:
            answer = labels[position[u]]
        else:
            answer = ("yes" if a == position[u] else "no") if yes_no[u] else catalogue.explanation(h, target[u])
        outputs, correct = [], []
        for k, name in enumerate(names):
            ranked = rankings[name][u]
            top = (ranked[0] + other[u, k]) % config.candidates if noisy[u, k] else ranked[0]
            if listing[u]:
                outputs.append(labels[top])
                correct.append(bool(ranked[0] == position[u]))
            else:  # a tool says yes when it ranks the asked item in its top quarter
                top_quarter = ranked[:max(1, config.candidates // 4)]
                says_yes = (a in top_quarter) != bool(noisy[u, k])
                outputs.append("yes" if says_yes else "no")
                correct.append((a in top_quarter) == (a == position[u]))
        chosen = decision or {"low": "delegate", "medium": "answer", "high": "consult"}[levels[u]]
        if t == "explain" or not names:
            chosen = "answer"
        used = [config.primary if config.primary in names else names[0]] if chosen == "delegate" else (
            names if chosen == "consult" else [])
        d = Deliberation(decision=chosen, answer="", horizon=None if t == "explain" else float(c[u]),
                         level=None if t == "explain" else str(levels[u]), tools=tuple(used),
                         tool_outputs=tuple(outputs[names.index(n)] for n in used))
        prompt = render(template, user=str(history.user_ids[u]), profile=catalogue.profile(h),
                        history=[catalogue.items[i] for i in shown],
                        candidates=[catalogue.items[i] for i in listed] if listing[u] else (),
                        item=catalogue.items[listed[0]], horizon=float(c[u]), rating=5)
        context = format_context(d)
        rows["user_id"].append(str(history.user_ids[u]))
        rows["task"].append(t)
        rows["template_id"].append(template.id)
        rows["horizon"].append(float(c[u]))
        rows["level"].append(str(levels[u]))
        rows["decision"].append(chosen)
        rows["prompt"].append(prompt.text if warmup else prompt.text + "\n" + context)
        rows["images"].append(list(prompt.images))
        rows["labels"].append(list(prompt.labels))
        rows["candidates"].append(catalogue.ids[listed].tolist())
        rows["answer"].append(answer)
        rows["context"].append(context)
        rows["tools"].append(list(used))
        rows["tool_outputs"].append(list(d.tool_outputs))
        rows["usable"].append([n for n, ok in zip(names, correct) if ok])
        rows["noisy"].append([bool(noisy[u, names.index(n)]) for n in used])
        rows["teacher"].append(teacher[u].tolist() if listing[u] else [])
    return pa.table(rows, schema=SCHEMA)


def _direct_pool(data, split, history, target, keep, config, rng) -> np.ndarray:
    """The candidates a direct request carries: the split's own (valid/test), else the positive and random unseen
    items, as many as the prepared requests have (or ``config.pool``)."""
    if split != "train":
        pool = data.eval_set(split).candidates
        return pool if keep is None else pool[np.asarray(keep)]
    size = config.pool or data.eval_set("valid").candidates.shape[1]
    size = min(size, data.n_items - int(history.lengths.max(initial=0)))
    return sample_candidates(history, target, data.n_items, size, rng)[0]
