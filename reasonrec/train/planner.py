"""Fit the planner on the validation split (``reasonrec fit-planner``): the aggregator, then kappa and the
evidence-horizon thresholds, stored in the bundle manifest (DESIGN.md §4, §6).

The validation requests run once through the nightly job's own stages (``LocalPipeline``) with every consulted
tool and the VLM on every row. Each row then has its target's rank under each way of answering (primary tool,
majority vote, VLM alone, aggregator); a plan (tau_low, tau_high, kappa) picks one per row, so the whole grid of
plans replays from those ranks without another model call. The chosen plan is the cheapest (fewest VLM calls)
whose validation HR@5 is within ``tolerance`` of the best plan's. The test split is never read.
"""
from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reasonrec.batch.config import ScoreConfig
from reasonrec.batch.context import Scoring
from reasonrec.horizon import route_index
from reasonrec.planner import Aggregator, Planner, Policy

logger = logging.getLogger(__name__)

ANSWERERS = ("tool", "vote", "vlm", "aggregate")
CUTOFF = 5  # HR@5 / NDCG@5 decide
# What a plan is judged by on validation, per row: a hit in the top 5 for the ranking tasks, the mean log-likelihood
# of the candidates' click labels for ctr (its answers are probabilities: calibration counts, not only the order).
QUALITY = {"sequential": f"HR@{CUTOFF}", "direct": f"HR@{CUTOFF}", "ctr": "LogLik"}


@dataclasses.dataclass
class FitPlannerConfig:
    tasks: tuple[str, ...] = ()  # empty: every task the bundle has tools for (sequential, direct; ctr with CTR tools)
    users: int = 0  # validation users per task (0: all of them)
    tolerance: float = 0.01  # relative HR@5 a cheaper plan may give up against the best plan on validation
    max_vlm_share: float = 1.0  # the GPU budget: plans sending a larger share of rows to the VLM are not chosen
    grid: int = 11  # tau candidates: quantiles of the validation horizon
    regularisation: float = 1.0  # inverse L2 strength of the logistic regression
    seed: int = 0
    score: ScoreConfig = dataclasses.field(default_factory=ScoreConfig)

    def __post_init__(self):
        if not 0 <= self.tolerance < 1 or self.grid < 2:
            raise ValueError("FitPlannerConfig: tolerance must be in [0, 1) and grid >= 2")
        if not 0 <= self.max_vlm_share <= 1:
            raise ValueError(f"FitPlannerConfig: max_vlm_share must be in [0, 1], got {self.max_vlm_share}")


def signals(data, bundle, config: ScoreConfig, split: str, task: str, users: int = 0,
            seed: int = 0, vlm: bool = True) -> tuple[pa.Table, np.ndarray]:
    """The split's requests for ``task`` through the job's stages, VLM on every row (``vlm``; else the tools
    alone); and each row's target.

    On the validation split the tools answer with their holdout weights: a tool refit on train + validation has
    seen every validation target, and a planner fitted on its answers would trust it blindly."""
    from reasonrec.batch.local import LocalPipeline
    from reasonrec.batch.requests import requests_for_split

    requests = requests_for_split(data, split, task, k=max(10, CUTOFF), seed=seed)
    if users and users < requests.num_rows:
        requests = requests.take(np.sort(np.random.default_rng(seed).permutation(requests.num_rows)[:users]))
    targets = data.table(split)
    target_of = dict(zip(targets.column("user_id").to_pylist(), targets.column("item_id").to_pylist()))
    start = time.perf_counter()
    # vlm-only plans every row for the VLM, and the tool stage scores every tool on rows not planned for the
    # primary tool alone: all the signals, with no fitted aggregator needed (the planner is what is being fitted).
    mode = "vlm-only" if vlm else "tools-only"
    pipeline = LocalPipeline(Scoring(bundle, dataclasses.replace(config, mode=mode)), decide=False,
                             holdout=split == "valid")
    table = pipeline(requests, source=f"{split}:{task}")
    table = table.filter(table.column("error").is_null())
    logger.info(f"{split} {task}: {table.num_rows} rows through tools + VLM in {time.perf_counter() - start:.0f}s")
    target = np.array([target_of[u] for u in table.column("user_id").to_pylist()], dtype=object)
    return table, target


def quality_by_answerer(table: pa.Table, target: np.ndarray, bundle, config: ScoreConfig, task: str,
                        planner: Planner | None = None, answerers=ANSWERERS) -> dict[str, np.ndarray]:
    """Per row, the ``QUALITY`` of its answer when each of ``answerers`` answers it (the job's own planner stage);
    ``planner`` replaces the bundle's (while fitting it)."""
    from reasonrec.batch.planner_stage import PlannerStage
    from reasonrec.evaluator import ctr_loglik, ranks_from_results

    # The mode only matters for escalation, which none of these replays wants: every row is answered by one answerer.
    modes = {"tool": "tools-only", "vote": "tools-only", "vlm": "vlm-only", "aggregate": "vlm+tools-always"}
    users = table.column("user_id").to_numpy(zero_copy_only=False)
    scoring = Scoring(bundle, config)
    out = {}
    for answerer in answerers:
        mode = modes[answerer]
        rows = table.set_column(table.schema.get_field_index("plan"), "plan",
                                pa.array(np.full(table.num_rows, answerer), pa.string()))
        stage = PlannerStage(scoring, mode=mode)
        stage.planner = planner or stage.planner
        answered = stage(rows)
        if task == "ctr":
            out[answerer] = ctr_loglik(answered, users, target)
        else:
            out[answerer] = (ranks_from_results(answered, users, target) < CUTOFF).astype(np.float64)
    return out


PLAN_FIELDS = ("tau_low", "tau_high", "kappa", "low_vote")


def replay(horizon: np.ndarray, confidence: np.ndarray, hits: dict[str, np.ndarray],
           plans: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(quality, VLM-call share) of every plan over the rows, vectorised. ``plans``: arrays of PLAN_FIELDS, one
    entry per plan; ``low_vote`` says whether route low is answered by the tools' vote or the primary tool."""
    c, conf = horizon[None, :], np.nan_to_num(confidence, nan=0.0)[None, :]
    route = route_index(c, plans["tau_low"][:, None], plans["tau_high"][:, None])  # (plans, rows), as Planner.routes
    low, medium = route == 0, route == 1
    vlm_alone = medium & (conf >= plans["kappa"][:, None])
    low_hits = np.where(plans["low_vote"][:, None], hits["vote"][None, :], hits["tool"][None, :])
    quality = np.where(low, low_hits, np.where(vlm_alone, hits["vlm"], hits["aggregate"]))
    return quality.mean(axis=1), (~low).mean(axis=1)


def plan_grid(horizon: np.ndarray, confidence: np.ndarray, points: int) -> dict[str, np.ndarray]:
    """Every plan over quantiles of the horizon (tau) and of the VLM's confidence (kappa), either low answerer."""
    taus = np.unique(np.concatenate([[0.0, 1.0], np.quantile(horizon, np.linspace(0, 1, points))]))
    conf = np.nan_to_num(confidence, nan=0.0)
    kappas = np.unique(np.concatenate([[0.0, 1.01], np.quantile(conf, np.linspace(0.1, 0.9, points - 2))]))
    grid = np.meshgrid(taus, taus, kappas, [False, True], indexing="ij")
    keep = grid[0] <= grid[1]
    return {name: g[keep] for name, g in zip(PLAN_FIELDS, grid)}


def plan(plans: dict[str, np.ndarray], i: int) -> dict:
    return {"tau_low": float(plans["tau_low"][i]), "tau_high": float(plans["tau_high"][i]),
            "kappa": float(plans["kappa"][i]), "low": "vote" if plans["low_vote"][i] else "tool"}


def choose(quality: np.ndarray, share: np.ndarray, tolerance: float, max_share: float = 1.0) -> int:
    """The cheapest plan within ``tolerance`` (relative) of the best plan that sends at most ``max_share`` of the rows
    to the VLM; ties go to the better plan. Relative to the best's magnitude, so that it also holds for a
    log-likelihood (negative, higher is better)."""
    affordable = share <= max_share + 1e-12
    if not affordable.any():
        raise ValueError(f"fit-planner: no plan sends at most {max_share:.1%} of the rows to the VLM (the cheapest "
                         f"sends {share.min():.1%}: rows with no usable history always consult it); raise "
                         "max_vlm_share")
    best = quality[affordable].max()
    good = affordable & (quality >= best - tolerance * abs(best) - 1e-12)
    candidates = np.flatnonzero(good)
    return int(candidates[np.lexsort((-quality[candidates], share[candidates]))[0]])


def fit_task(table: pa.Table, target: np.ndarray, bundle, config: FitPlannerConfig,
             task: str) -> tuple[Policy, dict]:
    from reasonrec.batch.columns import padded

    score = config.score
    scoring = Scoring(bundle, score)
    n, tools, kind = score.shortlist, scoring.tools_for(task), "ctr" if task == "ctr" else "ranking"
    rows = table.num_rows
    vocab = scoring.vocab
    shortlist = padded(table.column("pool"), n, fill=-1, to=vocab.index)
    tool_scores = np.nan_to_num(padded(table.column("tool_scores"), len(tools) * n).reshape(rows, len(tools), n)
                                .transpose(1, 0, 2), nan=-np.inf, neginf=-np.inf)
    vote = padded(table.column("pool_scores"), n, fill=-np.inf)
    vlm = padded(table.column("vlm_scores"), n)
    confidence = pc.fill_null(table.column("vlm_confidence"), np.nan).to_numpy(zero_copy_only=False)
    horizon = table.column("horizon").to_numpy(zero_copy_only=False).astype(np.float64)
    positive = shortlist == vocab.index(target)[:, None]
    inside = positive.any(axis=1)
    x = Aggregator.features(tool_scores, vote, vlm, confidence, horizon, kind)[inside]
    valid = np.isfinite(tool_scores[0][inside])
    aggregator = Aggregator.fit(tools, x[valid], positive[inside][valid], c=config.regularisation, kind=kind)
    logger.info(f"{task}: aggregator fitted on {int(inside.sum())} rows whose target is in the shortlist of {n} "
                f"({inside.mean():.1%} of {rows}); weights " + ", ".join(
                    f"{name} {w:+.2f}" for name, w in zip(Aggregator.feature_names(tools, kind), aggregator.coef)))

    fitted = Planner(scoring.tools, scoring.primary, {task: Policy(aggregator=aggregator.to_dict())})
    hits = quality_by_answerer(table, target, bundle, score, task, planner=fitted)
    plans = plan_grid(horizon, confidence, config.grid)
    quality, share = replay(horizon, confidence, hits, plans)
    best = choose(quality, share, config.tolerance, config.max_vlm_share)
    # The ablation: the same rows and plan, the aggregator fitted and applied without any VLM evidence.
    no_vlm = Aggregator.fit(tools, Aggregator.features(tool_scores, vote, np.full_like(vlm, np.nan),
                                                       np.full(rows, np.nan), horizon, kind)[inside][valid],
                            positive[inside][valid], c=config.regularisation, kind=kind)
    without = without_vlm_quality(table.drop_columns(["vlm_scores", "vlm_confidence"]), target, bundle, score, task,
                                  Policy(**plan(plans, best), tools_aggregator=no_vlm.to_dict()))
    policy = Policy(**plan(plans, best), aggregator=aggregator.to_dict(), tools_aggregator=no_vlm.to_dict())
    key = QUALITY[task]
    summary = {
        "rows": rows, "shortlist_recall": float(inside.mean()), "metric": key,
        key: {a: float(h.mean()) for a, h in hits.items()},
        "plan": {**plan(plans, best), key: float(quality[best]), "vlm_share": float(share[best])},
        "without_vlm": float(without.mean()),
        f"best_{key}": float(quality.max()), "plans_tried": int(len(quality)), "max_vlm_share": config.max_vlm_share,
    }
    logger.info(f"{task}: validation {key} primary tool {hits['tool'].mean():.4f}, vote {hits['vote'].mean():.4f}, "
                f"VLM alone {hits['vlm'].mean():.4f}, aggregator {hits['aggregate'].mean():.4f}; chosen plan "
                f"tau_low {policy.tau_low:.3f} (answered by {policy.low}), tau_high {policy.tau_high:.3f}, kappa "
                f"{policy.kappa:.3f}: {key} {quality[best]:.4f} with the VLM on {share[best]:.1%} of rows (best plan "
                f"{quality.max():.4f}, {len(quality)} plans); the same plan without the VLM (the tools' aggregator "
                f"on its rows) {without.mean():.4f}")
    return policy, summary


def without_vlm_quality(table: pa.Table, target: np.ndarray, bundle, score: ScoreConfig, task: str,
                        policy: Policy) -> np.ndarray:
    """Per row, the quality of ``policy``'s plan with the VLM removed: route low answered as the plan says, every
    other row by the aggregator fitted without VLM evidence (``policy.tools_aggregator``). ``table``: tool signals."""
    scoring = Scoring(bundle, score)
    planner = Planner(scoring.tools, scoring.primary, {task: dataclasses.replace(
        policy, aggregator=policy.tools_aggregator)})
    hits = quality_by_answerer(table, target, bundle, score, task, planner=planner,
                               answerers=("tool", "vote", "aggregate"))
    horizon = table.column("horizon").to_numpy(zero_copy_only=False).astype(np.float64)
    route = route_index(horizon, policy.tau_low, policy.tau_high)
    low_hits = hits["vote"] if policy.low == "vote" else hits["tool"]
    return np.where(route == 0, low_hits, hits["aggregate"])


def without_vlm(data_uri: str, bundle_uri: str, split: str = "test", score: ScoreConfig | None = None) -> dict:
    """Per task with a fitted planner, the mean quality on ``split`` of its plan with the VLM removed (the tools'
    aggregator on every row the plan sends to the VLM): the figure the full planner must beat for its gain to be the
    VLM's. Reads only the tools."""
    from reasonrec import storage
    from reasonrec.bundle import Bundle
    from reasonrec.data.prepared import PreparedData

    score = score or ScoreConfig()
    data, bundle = PreparedData(storage.absolute(data_uri)), Bundle(bundle_uri)
    policies = (bundle.manifest.get("planner") or {}).get("policies", {})
    out = {}
    for task, fitted in policies.items():
        policy = Policy(**fitted)
        if not policy.tools_aggregator:
            continue
        table, target = signals(data, bundle, score, split, task, vlm=False)
        quality = float(without_vlm_quality(table, target, bundle, score, task, policy).mean())
        # ctr: the rows' mean log-likelihood is minus the LogLoss the evaluator reports (every row has 1 + 4 labels)
        out[task] = {"LogLoss": -quality} if task == "ctr" else {QUALITY[task]: quality}
        out[task]["rows"] = table.num_rows
    return out


def fit_planner(data_uri: str, bundle_uri: str, config: FitPlannerConfig | None = None) -> dict:
    """Fit the planner on the validation split and commit it into the bundle; returns the bundle's manifest."""
    from reasonrec import storage
    from reasonrec.bundle import Bundle, BundleWriter
    from reasonrec.data.prepared import PreparedData

    config = config or FitPlannerConfig()
    data = PreparedData(storage.absolute(data_uri))
    bundle = Bundle(bundle_uri)
    bundle.manifest.pop("planner", None)  # a refit starts afresh (in memory; the commit replaces it)
    scoring = Scoring(bundle, dataclasses.replace(config.score, mode="vlm-only"))
    scoring.check()
    if list(bundle.item_ids()) != list(data.item_vocab.ids):
        raise ValueError(f"bundle {bundle_uri} was trained on another item catalogue than {data_uri}")
    tasks = config.tasks or tuple(t for t in scoring.answered if t != "explain")  # no plan: the VLM alone
    unanswerable = [t for t in tasks if t not in scoring.answered]
    if unanswerable:
        raise ValueError(f"fit-planner: bundle {bundle_uri} cannot answer {unanswerable}: "
                         + "; ".join(scoring.unanswered.get(t, "no such task") for t in unanswerable))
    used = sorted({name for t in tasks for name in scoring.tools_for(t)})
    unheld = [t for t in used if bundle.tool_was_refit(t) and not bundle.has_holdout(t)]
    if unheld:
        raise ValueError(f"bundle {bundle_uri}: tool(s) {unheld} were refit on train + validation and the bundle "
                         "keeps no holdout copy of them, so the validation split cannot fit the planner honestly: "
                         "retrain them with `reasonrec train-tools` (this version keeps tools/<name>/holdout/)")
    policies, validation = {}, {}
    for task in tasks:
        table, target = signals(data, bundle, config.score, "valid", task, config.users, config.seed)
        policies[task], validation[task] = fit_task(table, target, bundle, config, task)
    with BundleWriter(bundle_uri) as writer:
        writer.update(planner={
            "tools": scoring.tools_for("sequential"), "tools_by_task": {t: scoring.tools_for(t) for t in tasks},
            "policies": {t: dataclasses.asdict(p) for t, p in policies.items()},
            "fitted_on": "valid", "tolerance": config.tolerance, "max_vlm_share": config.max_vlm_share,
            "shortlist": config.score.shortlist,
            "validation": validation, "primary": scoring.primary})
        manifest = writer.commit()
    logger.info(f"bundle {manifest['version']} committed to {bundle_uri} with the fitted planner")
    return manifest


def copy_with_plan(bundle_uri: str, plan: str, out_uri: str) -> str:
    """A copy of the bundle whose planner uses ``plan`` = "tau_low,tau_high,kappa,low" for every task, the fitted
    aggregators kept: for what-if runs and benchmarks (the manifest's checksums cover files, not itself)."""
    from reasonrec import storage

    tau_low, tau_high, kappa, low = plan.split(",")
    checked = Policy(float(tau_low), float(tau_high), float(kappa), low=low)
    for rel in storage.list_files(bundle_uri):
        storage.write_bytes(storage.join(out_uri, rel), storage.read_bytes(storage.join(bundle_uri, rel)))
    manifest = storage.read_json(storage.join(out_uri, "manifest.json"))
    for policy in manifest["planner"]["policies"].values():
        policy.update(tau_low=checked.tau_low, tau_high=checked.tau_high, kappa=checked.kappa, low=checked.low)
    storage.write_json(storage.join(out_uri, "manifest.json"), manifest)
    return out_uri
