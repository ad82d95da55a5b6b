"""``reasonrec report``: what the planner buys, from committed runs of the nightly job (one per mode).

Per mode: HR@5/NDCG@5 (and the bundle's single tools on the same users), VLM calls, tool consultations, speed.
Per route: share of rows, VLM and tool calls, mean and p95 latency per row. The agreement/override table (paper
Table 4), the cold-start view (ten user groups by training frequency, paper Table 3) and a threshold sweep: every
plan (tau_low, tau_high, kappa) replayed on the split's signals as VLM calls vs HR@5, the cost/quality frontier
(PNG). Written as ``report.md``, ``report.json`` and ``frontier.png``.
"""
from __future__ import annotations

import dataclasses
import logging
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reasonrec import storage
from reasonrec.metrics import hit_and_ndcg
from reasonrec.paper import published

CUTOFF = 5
METRIC = {"sequential": (f"HR@{CUTOFF}", f"NDCG@{CUTOFF}"), "direct": (f"HR@{CUTOFF}", f"NDCG@{CUTOFF}"),
          "ctr": ("AUC", "LogLoss")}  # each task's two figures, the first the headline (cold start, sweep)
logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ReportConfig:
    split: str = "test"
    sweep_users: int = 1000  # users per task replayed in the threshold sweep (0: no sweep)
    backend: str = "auto"  # the VLM backend for the sweep's signals
    groups: int = 10  # cold-start groups
    item_groups: int = 5  # new-item groups: rows by their target's training interactions


def load_run(output: str) -> tuple[dict, pa.Table]:
    from reasonrec.batch.commit import committed_dates, committed_run, read_committed

    dates = committed_dates(output)
    if not dates:
        raise FileNotFoundError(f"{output}: no committed run of the nightly job")
    return committed_run(output, dates[-1]), read_committed(output, dates[-1])


def _np(column) -> np.ndarray:
    return column.to_numpy(zero_copy_only=False)


def target_items(data, split: str, users: np.ndarray) -> np.ndarray:
    """Each user's held-out item of ``split`` (vectorised lookup)."""
    from reasonrec.data.vocab import Vocab

    targets = data.table(split)
    row = Vocab(_np(targets.column("user_id"))).index(users)
    if (row < 0).any():
        raise ValueError(f"{int((row < 0).sum())} answered user(s) have no {split} target, e.g. {users[row < 0][0]!r}")
    return _np(targets.column("item_id")).astype(object)[row]


def route_table(results: pa.Table) -> list[dict]:
    route = _np(results.column("route")).astype(str)
    latency = _np(results.column("latency_ms")).astype(np.float64)
    vlm = _np(results.column("vlm_called")).astype(bool)
    tools = _np(pc.fill_null(pc.list_value_length(results.column("tools")), 0))
    rows = []
    for name in ("low", "medium", "high"):
        r = route == name
        if not r.any():
            continue
        rows.append({"route": name, "rows": int(r.sum()), "share": float(r.mean()), "vlm_calls": int(vlm[r].sum()),
                     "tool_calls": int(tools[r].sum()), "escalated": int(_np(results.column("escalated"))[r].sum()),
                     "latency_mean_ms": float(latency[r].mean()),
                     "latency_p95_ms": float(np.percentile(latency[r], 95))})
    return rows


def agreement_table(results: pa.Table, target: np.ndarray) -> dict | None:
    """Rows where the VLM and the tools both gave an answer: agreement, overrides, and who was right (top 1)."""
    vlm_top, tools_top = _np(results.column("vlm_top")), _np(results.column("tools_top"))
    both = (vlm_top != None) & (tools_top != None)  # noqa: E711 (object arrays)
    if not both.any():
        return None
    final = np.array([r[0]["item_id"] if r else None for r in results.column("ranked").to_pylist()], dtype=object)
    agree = both & (vlm_top == tools_top)
    disagree = both & ~agree
    followed_vlm = disagree & (final == vlm_top)

    def cell(mask):
        n = int(mask.sum())
        return {"rows": n, "share": n / int(both.sum()),
                "final_right": float((final[mask] == target[mask]).mean()) if n else None,
                "vlm_right": float((vlm_top[mask] == target[mask]).mean()) if n else None,
                "tools_right": float((tools_top[mask] == target[mask]).mean()) if n else None}

    return {"rows": int(both.sum()), "agree": cell(agree), "vlm_overrode": cell(followed_vlm),
            "tools_kept": cell(disagree & ~followed_vlm)}


def cold_start(results: pa.Table, measure, data, groups: int) -> list[dict]:
    """Users in ``groups`` equal groups by training interactions (paper Table 3), each with ``measure(rows)`` (the
    task's metric over those result rows) and its tool usage."""
    from reasonrec.data.vocab import Vocab

    train = data.train
    row = Vocab(train.user_ids).index(_np(results.column("user_id")))
    frequency = np.where(row >= 0, train.lengths[np.maximum(row, 0)], 0)  # an unknown user has no interactions
    tools = _np(pc.fill_null(pc.list_value_length(results.column("tools")), 0)) > 0
    return [{"group": g, "users": int(len(rows)), "train_interactions": span, **measure(rows),
             "tool_usage": float(tools[rows].mean())} for g, rows, span in by_frequency(frequency, groups)]


def by_frequency(frequency: np.ndarray, groups: int):
    """(group number from 1, row indices, [min, max] frequency) of ``groups`` equal groups of rows, least frequent
    first; empty groups skipped."""
    for g, rows in enumerate(np.array_split(np.argsort(frequency, kind="stable"), groups)):
        if len(rows):
            yield g + 1, rows, [int(frequency[rows].min()), int(frequency[rows].max())]


def new_items(results: pa.Table, target: np.ndarray, measure, data, groups: int) -> list[dict]:
    """Rows in ``groups`` equal groups by their target item's training interactions (the first groups: new arrivals
    and the long tail, which an ID-only tool knows least), each with ``measure(rows)`` and the VLM's share."""
    counts = np.bincount(data.train.items, minlength=data.n_items + 1)
    index = data.item_vocab.index(np.asarray(target, dtype=object))
    frequency = np.where(index > 0, counts[np.maximum(index, 0)], 0)
    vlm = _np(results.column("vlm_called")).astype(bool)
    return [{"group": g, "rows": int(len(rows)), "target_interactions": span, **measure(rows),
             "vlm_share": float(vlm[rows].mean())} for g, rows, span in by_frequency(frequency, groups)]


def task_quality(rows: pa.Table, target: np.ndarray, task: str):
    """The task's metrics over the result rows, and the same over any subset of them (for the cold-start groups):
    HR/NDCG@5 of the ranks for ranking tasks, AUC/LogLoss of the committed click probabilities for ctr."""
    from reasonrec.evaluator import candidate_labels, ranks_from_results
    from reasonrec.metrics import auc_and_logloss

    users = _np(rows.column("user_id")).astype(object)
    if task == "ctr":
        parent, probability, clicked = candidate_labels(rows, users, target)

        def measure(subset):
            inside = np.isin(parent, subset)
            return auc_and_logloss(clicked[inside], probability[inside])
    else:
        ranks = ranks_from_results(rows, users, target)

        def measure(subset):
            return {f"HR@{CUTOFF}": float((ranks[subset] < CUTOFF).mean())}
    overall = auc_and_logloss(clicked, probability) if task == "ctr" else hit_and_ndcg(ranks, ks=[CUTOFF])
    return overall, measure


def single_tools(data, bundle, results: pa.Table, task: str, split: str) -> dict:
    """HR/NDCG@5 (ctr: AUC/LogLoss) of every tool of the bundle for the task alone, on the users the runs
    answered."""
    from reasonrec.data.prepared import EvalSet
    from reasonrec.data.vocab import Vocab
    from reasonrec.evaluator import evaluate, tool_scorer

    if task == "ctr":
        return single_ctr_tools(data, bundle, results, split)
    evalset = data.eval_set(split)
    rows = Vocab(evalset.history.user_ids).index(_np(results.column("user_id")))
    rows = np.sort(rows[rows >= 0])
    subset = EvalSet(evalset.history.select(rows), evalset.target[rows],
                     None if evalset.candidates is None else evalset.candidates[rows])
    return {name: {k: v for k, v in evaluate(tool_scorer(bundle.load_tool(name)), subset, task).items()
                   if k.endswith(f"@{CUTOFF}")} for name in bundle.tools_for(task)}


def single_ctr_tools(data, bundle, results: pa.Table, split: str) -> dict:
    import torch

    from reasonrec.metrics import auc_and_logloss

    rows = data.ctr_set(split)
    rows = rows.select(np.flatnonzero(np.isin(rows.history.user_ids, _np(results.column("user_id")))))
    out = {}
    for name in bundle.tools_for("ctr"):
        with torch.no_grad():
            probability = torch.sigmoid(bundle.load_tool(name).logits_of(rows.history, rows.items)).numpy()
        out[name] = auc_and_logloss(rows.labels, probability)
    return out


def sweep(data, bundle, task: str, config: ReportConfig) -> dict:
    """Every plan of the fitting grid replayed on the split (deployed tools, the VLM on every sampled row)."""
    from reasonrec.batch.config import ScoreConfig
    from reasonrec.batch.context import Scoring
    from reasonrec.train.planner import plan_grid, quality_by_answerer, replay, signals
    from reasonrec.vlm.deliberator import DeliberatorConfig, local_device

    fitted = bundle.manifest.get("planner", {})  # the primary tools it was fitted with come from the bundle
    score = ScoreConfig(shortlist=fitted.get("shortlist", 20),
                        deliberator=DeliberatorConfig(backend=config.backend, device=local_device()))
    table, target = signals(data, bundle, score, config.split, task, config.sweep_users)
    hits = quality_by_answerer(table, target, bundle, score, task)
    horizon = _np(table.column("horizon")).astype(np.float64)
    confidence = _np(pc.fill_null(table.column("vlm_confidence"), np.nan)).astype(np.float64)
    plans = plan_grid(horizon, confidence, 11)
    quality, share = replay(horizon, confidence, hits, plans)
    policy = Scoring(bundle, score).planner.policy(task)
    fitted_plan = {"tau_low": np.array([policy.tau_low]), "tau_high": np.array([policy.tau_high]),
                   "kappa": np.array([policy.kappa]), "low_vote": np.array([policy.low == "vote"])}
    q, s = replay(horizon, confidence, hits, fitted_plan)
    return {"rows": table.num_rows, "plans": {**{k: v.tolist() for k, v in plans.items()},
                                               f"HR@{CUTOFF}": quality.tolist(), "vlm_share": share.tolist()},
            "fitted": {"tau_low": policy.tau_low, "tau_high": policy.tau_high, "kappa": policy.kappa,
                       "low": policy.low, "max_vlm_share": float(fitted.get("max_vlm_share", 1.0)),
                       f"HR@{CUTOFF}": float(q[0]), "vlm_share": float(s[0])},
            "modes": {"tools-only": {f"HR@{CUTOFF}": float(hits["vote"].mean()), "vlm_share": 0.0},
                      "vlm-only": {f"HR@{CUTOFF}": float(hits["vlm"].mean()), "vlm_share": 1.0},
                      "vlm+tools-always": {f"HR@{CUTOFF}": float(hits["aggregate"].mean()), "vlm_share": 1.0},
                      "primary tool": {f"HR@{CUTOFF}": float(hits["tool"].mean()), "vlm_share": 0.0}}}


def plot_frontier(sweeps: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sweeps), figsize=(6 * len(sweeps), 4.5), squeeze=False)
    for ax, (task, s) in zip(axes[0], sweeps.items()):
        share, quality = np.array(s["plans"]["vlm_share"]), np.array(s["plans"][f"HR@{CUTOFF}"])
        ax.scatter(share, quality, s=8, alpha=0.3, color="grey", label="plans (tau_low, tau_high, kappa)")
        order = np.lexsort((-quality, share))
        best = np.maximum.accumulate(quality[order])
        ax.step(share[order], best, where="post", color="black", label="frontier")
        for (name, m), marker in zip(s["modes"].items(), "s^Dv"):
            ax.scatter(m["vlm_share"], m[f"HR@{CUTOFF}"], marker=marker, s=60, label=name)
        budget = s["fitted"].get("max_vlm_share", 1.0)
        ax.scatter(s["fitted"]["vlm_share"], s["fitted"][f"HR@{CUTOFF}"], marker="*", s=220, color="red",
                   label="fitted planner" + (f" (VLM budget {budget:.0%})" if budget < 1 else ""))
        if budget < 1:
            ax.axvline(budget, color="red", linestyle=":", linewidth=1, label="max_vlm_share")
        ax.set(title=f"{task}: VLM calls vs HR@{CUTOFF} ({s['rows']} users)", xlabel="share of rows sent to the VLM",
               ylabel=f"HR@{CUTOFF}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(run_uris: list[str], data_uri: str, out: str | None = None, config: ReportConfig | None = None,
                 bundle_uri: str | None = None) -> dict:
    import tempfile

    from reasonrec.bundle import Bundle
    from reasonrec.data.prepared import PreparedData

    config = config or ReportConfig()
    data = PreparedData(storage.absolute(data_uri))
    runs = {}
    for uri in run_uris:
        manifest, results = load_run(storage.absolute(uri))
        mode = manifest.get("mode", "tools-only")
        if mode in runs:
            raise ValueError(f"two runs in mode {mode!r}: {runs[mode][0]['output']} and {uri}")
        runs[mode] = (manifest, results)
    bundle = Bundle(bundle_uri or next(iter(runs.values()))[0]["bundle"])
    tasks = sorted({t for _, r in runs.values() for t in _np(r.column("task")).astype(str)}
                   & {"sequential", "direct", "ctr"})
    dataset = data.meta["dataset"]
    report = {"split": config.split, "bundle": bundle.version, "dataset": dataset, "tasks": {}}
    for task in tasks:
        section = {"metric": METRIC[task], "modes": {}, "routes": {}, "agreement": {}, "cold_start": {},
                   "new_items": {}}
        for mode, (manifest, results) in runs.items():
            rows = results.filter(pc.equal(results.column("task"), task))
            if not rows.num_rows:
                continue
            users = _np(rows.column("user_id")).astype(object)
            target = target_items(data, config.split, users)  # ctr: the click among the candidates
            overall, measure = task_quality(rows, target, task)
            vlm = _np(rows.column("vlm_called")).astype(bool)
            tools = _np(pc.fill_null(pc.list_value_length(rows.column("tools")), 0))
            section["modes"][mode] = {
                **overall, "rows": rows.num_rows, "vlm_calls": int(vlm.sum()),
                "tool_calls": int(tools.sum()), "tool_usage": float((tools > 0).mean()),
                "override_rate": float(_np(rows.column("overrode")).mean()),
                "latency_mean_ms": float(_np(rows.column("latency_ms")).mean()),
                "users_per_s": manifest["users_per_s"], "run": f"{manifest['output']} ({manifest['run_id']})"}
            section["routes"][mode] = route_table(rows)
            section["agreement"][mode] = None if task == "ctr" else agreement_table(rows, target)
            section["cold_start"][mode] = cold_start(rows, measure, data, config.groups)
            if task != "ctr":
                section["new_items"][mode] = new_items(rows, target, measure, data, config.item_groups)
        any_rows = next(r for _, r in runs.values() if task in set(_np(r.column("task"))))
        section["single_tools"] = single_tools(data, bundle, any_rows.filter(pc.equal(any_rows.column("task"), task)),
                                               task, config.split)
        section["paper"] = published(dataset, task)
        if config.sweep_users and task != "ctr":
            section["sweep"] = sweep(data, bundle, task, config)
        report["tasks"][task] = section
        logger.info(f"report: {task} done")

    # Next to the runs: RUNS/planner, RUNS/tools-only, ... -> RUNS/report
    out = out or storage.join(posixpath.dirname(storage.absolute(run_uris[0]).rstrip("/")), "report")
    storage.write_json(storage.join(out, "report.json"), report)
    storage.write_bytes(storage.join(out, "report.md"), render_markdown(report).encode())
    sweeps = {t: s["sweep"] for t, s in report["tasks"].items() if "sweep" in s}
    if sweeps:
        with tempfile.TemporaryDirectory() as tmp:
            plot_frontier(sweeps, f"{tmp}/frontier.png")
            storage.write_bytes(storage.join(out, "frontier.png"), open(f"{tmp}/frontier.png", "rb").read())
    logger.info(f"report written to {out} (report.md, report.json" + (", frontier.png)" if sweeps else ")"))
    report["out"] = out
    return report


def _f(v, digits=4) -> str:
    return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def render_markdown(report: dict) -> str:
    lines = [f"# ReasonRec run report ({report['split']} split, bundle {report['bundle']})", ""]
    for task, s in report["tasks"].items():
        first, second = s["metric"]
        lines += [f"## {task}", "", f"| mode | rows | {first} | {second} | VLM calls | tool calls "
                  "| tool usage | VLM overrides | ms/row | users/s |", "|---|---|---|---|---|---|---|---|---|---|"]
        for mode, m in s["modes"].items():
            lines.append(f"| {mode} | {m['rows']} | {_f(m[first])} | {_f(m[second])} | "
                         f"{m['vlm_calls']} | {m['tool_calls']} | {m['tool_usage']:.1%} | {m['override_rate']:.1%} | "
                         f"{m['latency_mean_ms']:.2f} | {m['users_per_s']} |")
        for name, m in s["single_tools"].items():
            lines.append(f"| tool {name} alone | | {_f(m[first])} | {_f(m[second])} | 0 | | | | | |")
        if s.get("paper"):
            lines += ["", f"### Beside the paper ({'Table 2' if task == 'ctr' else 'Table 1'}, "
                      f"{report.get('dataset')}; its rows as published)", "",
                      f"| method | {first} | {second} | source |", "|---|---|---|---|"]
            lines += [f"| {mode} | {_f(m[first])} | {_f(m[second])} | measured here |"
                      for mode, m in s["modes"].items()]
            lines += [f"| {name} | {_f(m[first])} | {_f(m[second])} | measured here (tool alone) |"
                      for name, m in s["single_tools"].items()]
            lines += [f"| {name} | {m[first]:.4f} | {m[second]:.4f} | paper |" for name, m in s["paper"].items()]
        lines += ["", "### Routes", "",
                  "| mode | route | share | VLM calls | tool calls | escalated | mean ms | p95 ms |",
                  "|---|---|---|---|---|---|---|---|"]
        for mode, rows in s["routes"].items():
            lines += [f"| {mode} | {r['route']} | {r['share']:.1%} | {r['vlm_calls']} | {r['tool_calls']} | "
                      f"{r['escalated']} | {r['latency_mean_ms']:.2f} | {r['latency_p95_ms']:.2f} |" for r in rows]
        if any(s["agreement"].values()):
            lines += ["", "### Agreement and overrides (rows where the VLM and the tools both answered; right = top 1)",
                      "", "| mode | case | rows | share | final right | VLM right | tools right |",
                      "|---|---|---|---|---|---|---|"]
        for mode, a in s["agreement"].items():
            if a is None:
                continue
            for case in ("agree", "vlm_overrode", "tools_kept"):
                c = a[case]
                lines.append(f"| {mode} | {case} | {c['rows']} | {c['share']:.1%} | {_f(c['final_right'])} | "
                             f"{_f(c['vlm_right'])} | {_f(c['tools_right'])} |")
        lines += ["", f"### Cold start: users in ten groups by training interactions ({first} / tool usage)", ""]
        modes = list(s["cold_start"])
        lines += ["| group | interactions | " + " | ".join(modes) + " |", "|---|---|" + "---|" * len(modes)]
        for g, group in enumerate(s["cold_start"][modes[0]]):
            cells = [f"{_f(s['cold_start'][m][g][first])} / {s['cold_start'][m][g]['tool_usage']:.0%}"
                     for m in modes]
            lines.append(f"| {group['group']} | {group['train_interactions'][0]}-{group['train_interactions'][1]} | "
                         + " | ".join(cells) + " |")
        if s.get("new_items"):
            modes = list(s["new_items"])
            lines += ["", f"### New items: rows in {len(s['new_items'][modes[0]])} groups by their target's training "
                      f"interactions ({first} / VLM share)", "",
                      "| group | target interactions | " + " | ".join(modes) + " |", "|---|---|" + "---|" * len(modes)]
            for g, group in enumerate(s["new_items"][modes[0]]):
                cells = [f"{_f(s['new_items'][m][g][first])} / {s['new_items'][m][g]['vlm_share']:.0%}" for m in modes]
                lines.append(f"| {group['group']} | {group['target_interactions'][0]}-"
                             f"{group['target_interactions'][1]} | " + " | ".join(cells) + " |")
        if "sweep" in s:
            sw = s["sweep"]
            f = sw["fitted"]
            lines += ["", f"### Threshold sweep ({sw['rows']} users, {len(sw['plans']['vlm_share'])} plans; "
                      "frontier.png)", "",
                      f"Fitted plan (validation): tau_low {f['tau_low']:.3f} (low answered by {f['low']}), "
                      f"tau_high {f['tau_high']:.3f}, kappa "
                      f"{f['kappa']:.3f}: HR@{CUTOFF} {f[f'HR@{CUTOFF}']:.4f} with the VLM on {f['vlm_share']:.1%} "
                      "of rows" + (f", the best plan within the VLM budget (max_vlm_share {f['max_vlm_share']:.0%})"
                                   if f.get("max_vlm_share", 1.0) < 1 else "") + ". "
                      + "; ".join(f"{n} {m[f'HR@{CUTOFF}']:.4f}" for n, m in sw["modes"].items()), ""]
        lines.append("")
    return "\n".join(lines)

