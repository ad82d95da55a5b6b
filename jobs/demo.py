"""The embedded default, end to end on the synthetic catalogue: synth -> prepare -> train the tools -> fine-tune
the VLM -> fit the planner -> request shards for every test user -> the nightly job (planner mode) -> evaluate.

Local Ray, local folders under --out; it prints the job's summary and a table where the committed results sit
next to every tool of the bundle, the VLM's held-out HR@1 and the fitted plan per task."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import pyarrow.compute as pc

import reasonrec
import reasonrec.api
from jobs import cli, evaluation, finetune_vlm, fit_planner, nightly_score, prepare, synth, train_tools, write_requests
from reasonrec.data.synthetic import SyntheticConfig

CONFIGS = Path(reasonrec.__file__).parent / "configs"  # packaged with the library
TASKS = ("sequential", "direct", "ctr")


@dataclasses.dataclass
class DemoConfig:
    out: str = "demo_output"
    catalogue: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)
    tools_config: str = str(CONFIGS / "demo_tools.yaml")  # TrainToolsConfig YAML
    vlm_config: str = str(CONFIGS / "demo_vlm.yaml")  # FinetuneConfig YAML
    vlm_steps: int | None = None  # None: the VLM config's
    # Validation users the planner is fitted on (0: all): 1,000 of the ~1,900 keep the demo within 10 minutes on 2
    # cores, the VLM's pass over them being most of fit-planner's time.
    planner_users: int = 1000
    # The VLM actors' device (deliberator.device): the demo runs on a machine without GPUs, and says so.
    vlm_device: str = "cpu"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DemoConfig.out, help="everything the demo writes goes below this folder")
    parser.add_argument("--users", type=int, default=cli.default(SyntheticConfig, "users"),
                        help="users of the synthetic catalogue")
    parser.add_argument("--items", type=int, default=cli.default(SyntheticConfig, "items"),
                        help="items of the synthetic catalogue")
    parser.add_argument("--seed", type=int, default=cli.default(SyntheticConfig, "seed"), help="the catalogue's seed")
    parser.add_argument("--config", help="YAML for train-tools (default: the packaged configs/demo_tools.yaml)")
    parser.add_argument("--vlm-steps", type=int, help="R-VIT steps (default: configs/demo_vlm.yaml's)")


def config(args: argparse.Namespace) -> DemoConfig:
    return DemoConfig(args.out, SyntheticConfig(users=args.users, items=args.items, seed=args.seed),
                      args.config or DemoConfig.tools_config, vlm_steps=args.vlm_steps)


def run(demo: DemoConfig) -> dict:
    from reasonrec import storage
    from reasonrec.config import load
    from reasonrec.batch.config import ScoreConfig
    from reasonrec.train.planner import FitPlannerConfig, without_vlm
    from reasonrec.train.tools import TrainToolsConfig
    from reasonrec.vlm.deliberator import DeliberatorConfig
    from reasonrec.vlm.finetune import FinetuneConfig

    start = time.perf_counter()
    raw, data, bundle, shards, results = (storage.join(demo.out, p)
                                          for p in ("raw", "data", "bundle", "requests", "results"))
    synth.run(synth.SynthJob(raw, demo.catalogue))
    prepare.run(prepare.PrepareJob(raw, "parquet", data))
    train_tools.run(train_tools.TrainToolsJob(data, bundle, load(TrainToolsConfig, demo.tools_config)))
    vlm = finetune_vlm.run(finetune_vlm.FinetuneJob(
        data, bundle, vlm=load(FinetuneConfig, demo.vlm_config, {"steps": demo.vlm_steps})))["vlm"]
    score = ScoreConfig(deliberator=DeliberatorConfig(device=demo.vlm_device))
    cli.log().info(f"the VLM runs on {demo.vlm_device} (deliberator.device)")
    planner = fit_planner.run(fit_planner.FitPlannerJob(
        data, bundle, FitPlannerConfig(users=demo.planner_users, score=score)))["planner"]
    write_requests.run(write_requests.RequestsJob(data, shards, tasks=TASKS, shard_rows=1000))
    manifest = nightly_score.run(nightly_score.NightlyJob(shards, bundle, results, force=True, score=score))
    tools_eval = {task: evaluation.run(evaluation.EvaluateJob(data, task, bundle=bundle,
                                                          json=storage.join(demo.out, f"eval_{task}.json")))
                  for task in TASKS}
    batch_eval = {task: evaluation.run(evaluation.EvaluateJob(data, task, results=results,
                                                          run_date=manifest["run_date"])) for task in TASKS}
    ablation = without_vlm(data, bundle, score=score)  # the fitted plan, the VLM removed: what the VLM adds on test
    results_table = reasonrec.api.read_results(results, manifest["run_date"])
    called = pc.fill_null(results_table.column("vlm_called"), False).to_numpy(zero_copy_only=False)
    tasks = results_table.column("task").to_numpy(zero_copy_only=False)
    shares = {task: float(called[tasks == task].mean()) for task in TASKS if (tasks == task).any()}
    cli.log().info(summary(manifest, tools_eval, batch_eval, vlm, planner, data, demo.out,
                           time.perf_counter() - start, shares, ablation))
    return {"manifest": manifest, "tools": tools_eval, "batch": batch_eval, "vlm": vlm, "planner": planner,
            "vlm_shares": shares, "without_vlm": ablation}


def summary(manifest, tools_eval, batch_eval, vlm, planner, data, out, seconds, shares: dict,
            ablation: dict | None = None) -> str:
    lines = ["", "== ReasonRec demo summary (test split) =="]
    for task, report in tools_eval.items():
        lines.append(f"{task} ({report['users']} users), every tool in the bundle:")
        for name, m in {**report["tools"], **report["baselines"]}.items():
            lines.append(f"  {name:>14s}  " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
        lines.append(f"  {'nightly job':>14s}  " + "  ".join(f"{k} {v:.4f}" for k, v in batch_eval[task]["metrics"]
                                                              .items())
                     + f"   (committed results, mode {manifest['mode']}; route low answered by "
                       f"{manifest['primary'][task]} or the vote; the VLM on {shares.get(task, 0):.0%} of rows)")
        if task in (ablation or {}):
            key, committed = next(iter(ablation[task].items())), batch_eval[task]["metrics"]
            lines.append(f"  {'without the VLM':>14s}  {key[0]} {key[1]:.4f}   (the same fitted plan, the tools' "
                         f"aggregator on the rows it sends to the VLM; committed {key[0]} "
                         f"{committed.get(key[0], float('nan')):.4f})")
    m, t = vlm["metrics"], vlm["training"]
    per_task = m.get("tasks") or {m["task"]: m}
    lines.append(
        f"VLM deliberator (tiny Idefics3, R-VIT {t['steps']} steps, loss {t['loss_first']:.3f} -> "
        f"{t['loss_last']:.3f}), {m['users']} test users, the positive among {m['candidates']} random candidates, "
        f"alone (no tools), chance {m['chance']:.4f}:")
    for task, found in per_task.items():
        lines.append(f"  {task:>14s}  HR@1 tuned {found['HR@1_tuned']:.4f}, untuned {found['HR@1_untuned']:.4f}"
                     + (f", images blanked {found['HR@1_tuned_blank_images']:.4f}"
                        if "HR@1_tuned_blank_images" in found else ""))
    for task, v in planner["validation"].items():
        p, key = v["plan"], v["metric"]  # HR@5, or for ctr the mean log-likelihood of the click labels
        lines.append(
            f"planner for {task} (fitted on {v['rows']} validation users): route low (C < {p['tau_low']:.2f}) -> "
            f"{p['low']}, medium (C <= {p['tau_high']:.2f}) -> VLM unless confidence < {p['kappa']:.2f}, high -> "
            f"VLM + tools + aggregator; validation {key} {p[key]:.4f} with the VLM on {p['vlm_share']:.0%} of rows "
            f"(primary tool {v[key]['tool']:.4f}, vote {v[key]['vote']:.4f}, VLM alone {v[key]['vlm']:.4f}, "
            f"VLM + tools {v[key]['aggregate']:.4f})")
    lines.append(f"compare the four modes: reasonrec score --mode tools-only|vlm-only|vlm+tools-always|planner, then "
                 f"reasonrec report --run ... --data {data}")
    lines.append(f"outputs under {out}; finished in {seconds:.0f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return cli.run_module(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
