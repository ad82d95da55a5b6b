"""The paper's challenge tables from ``reasonrec evaluate --json`` reports, our rows beside its published ones.

- time shift (paper Fig. A2): every model on the leave-one-out split and on the time split of the same data;
- multi-domain (paper Table A4): every model trained on the combined catalogue, per domain, beside the same model
  trained on that domain alone;
- explanation (paper Table A2): the VLM's BLEU-4 / ROUGE-L beside the baselines measured in the same run.

A bundle report (``evaluate --bundle``) gives one row per tool, popularity and the Majority Vote; a results report
(``evaluate --results``) gives the system's row, named by the run's mode.
"""
from __future__ import annotations

from reasonrec.paper import TABLE_A2, TABLE_A4

METRICS = ("HR@5", "NDCG@5")


def model_rows(reports: list[dict], task: str, domain: str | None = None) -> dict[str, dict[str, float]]:
    """{model: metrics} of ``task`` over ``reports`` (of one domain when given)."""
    out = {}
    for report in reports:
        if report.get("task") != task:
            continue
        if "metrics" in report:  # committed results: the system
            metrics = report["by_domain"][domain] if domain else report["metrics"]
            out[f"ReasonRec system ({report.get('mode') or 'job'})"] = metrics
            continue
        found = report["by_domain"][domain] if domain else {**report["tools"], **report["baselines"]}
        out.update({name: found[name] for name in (*report["tools"], *report["baselines"])})
    return out


def _tasks(*groups: list[dict]) -> list[str]:
    seen = [r["task"] for group in groups for r in group]
    return [t for t in ("sequential", "direct") if t in seen]


def _change(after: float, before: float) -> str:
    return f"{(after - before) / before:+.0%}" if before else "-"


def _users(reports: list[dict], task: str) -> int:
    return max((r.get("users", 0) for r in reports if r.get("task") == task), default=0)


def time_shift(base: list[dict], shifted: list[dict]) -> str:
    """Markdown: per task, each model's HR@5 / NDCG@5 without and with the time shift, and the change."""
    lines = ["## Time shift (paper Fig. A2: the same models without and with a temporal split)", ""]
    dataset = next((r.get("dataset") for r in base + shifted if r.get("dataset")), "?")
    for task in _tasks(base, shifted):
        before, after = model_rows(base, task), model_rows(shifted, task)
        lines += [f"### {dataset}, {task} ({_users(base, task)} leave-one-out test users, {_users(shifted, task)} "
                  "time-split test users)", "",
                  "| model | HR@5 without | HR@5 with shift | change | NDCG@5 without | NDCG@5 with shift | change |",
                  "|---|---|---|---|---|---|---|"]
        for name in [*before, *(n for n in after if n not in before)]:
            b, a = before.get(name), after.get(name)
            cells = []
            for metric in METRICS:
                x, y = (b or {}).get(metric), (a or {}).get(metric)
                cells += [_f(x), _f(y), _change(y, x) if x is not None and y is not None else "-"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("The paper plots this on Pixel-1M (its Fig. A2, numbers not printed); no published row applies here.")
    return "\n".join(lines) + "\n"


def multi_domain(combined: list[dict], single: dict[str, list[dict]]) -> str:
    """Markdown: per domain, each model trained on the combined catalogue beside the same model trained on the
    domain alone (``single``: {domain: that domain's reports}), and the paper's Table A4 rows."""
    domains = next((list(r["by_domain"]) for r in combined if r.get("by_domain")), [])
    if not domains:
        raise ValueError("multi-domain table: no report has per-domain figures (evaluate on data prepared from "
                         "several --source)")
    dataset = next((r.get("dataset") for r in combined if r.get("dataset")), "?")
    lines = [f"## Multi-domain ({dataset}; paper Table A4)", ""]
    for task in _tasks(combined):
        for domain in domains:
            mixed, alone = model_rows(combined, task, domain), model_rows(single.get(domain, []), task)
            lines += [f"### {task}, domain {domain}", "",
                      "| model | HR@5 combined | HR@5 alone | ratio | NDCG@5 combined | NDCG@5 alone | ratio |",
                      "|---|---|---|---|---|---|---|"]
            for name, metrics in mixed.items():
                cells = []
                for metric in METRICS:
                    x, y = metrics.get(metric), (alone.get(name) or {}).get(metric)
                    cells += [_f(x), _f(y), f"{x / y:.2f}x" if x is not None and y else "-"]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["### Beside the paper (Table A4, sequential HR@5 / NDCG@5; its compositions, not this one)", "",
              "| model | composition | HR@5 | NDCG@5 |", "|---|---|---|---|"]
    for name, rows in TABLE_A4.items():
        lines += [f"| {name} | {c} | {h:.4f} | {n:.4f} |" for c, (h, n) in rows.items()]
    return "\n".join(lines) + "\n"


def explanation(reports: list[dict]) -> str:
    """Markdown: BLEU-4 / ROUGE-L of the VLM (``evaluate --task explain --bundle``), its baselines and the committed
    explanations (``evaluate --task explain --results``), beside the paper's Table A2."""
    rows = {}
    for report in reports:
        if report.get("task") != "explain":
            continue
        if "metrics" in report:
            rows[f"ReasonRec system ({report.get('mode') or 'job'}), {report['results']} rows"] = report["metrics"]
            continue
        rows[f"VLM ({report['rows']} rows)"] = report["vlm"]
        rows.update(report["baselines"])
    if not rows:
        raise ValueError("explanation table: no `evaluate --task explain` report given")
    dataset = next((r.get("dataset") for r in reports if r.get("dataset")), "?")
    lines = [f"## Explanation generation ({dataset}; paper Table A2, x 100)", "", "| model | BLEU-4 | ROUGE-L |",
             "|---|---|---|"]
    lines += [f"| {name} | {m['BLEU-4']:.2f} | {m['ROUGE-L']:.2f} |" for name, m in rows.items()]
    lines += ["", "### The paper's rows (its datasets)", "", "| model | dataset | BLEU-4 | ROUGE-L |",
              "|---|---|---|---|"]
    for name, by_dataset in TABLE_A2.items():
        lines += [f"| {name} | {d} | {b:.4f} | {r:.4f} |" for d, (b, r) in by_dataset.items()]
    return "\n".join(lines) + "\n"


def _f(value) -> str:
    return "-" if value is None else f"{value:.4f}"
