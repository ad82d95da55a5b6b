"""What the stages of one scoring process read from the bundle, resolved and loaded once.

The in-process pipeline and a Serve replica share one ``Scoring`` between their stages; each Ray actor builds its
own. It resolves, per task, the tools the planner consults (ranking tools for sequential and direct, CTR tools for
ctr) and the primary tool, and decides before any row is read which tasks this job can answer: requests for the
others are quarantined with the reason.
"""
from __future__ import annotations

import functools

from reasonrec.batch.config import RANKED_TASKS, ScoreConfig
from reasonrec.bundle import Bundle
from reasonrec.data.vocab import Vocab
from reasonrec.planner import Planner, Policy

# What answered each ranking task before bundles recorded their own choice (train-tools now records the best tool on
# validation): a bundle trained earlier keeps its answers.
FORMER_PRIMARY = {"sequential": "sasrec", "direct": "lightgcn"}


class Scoring:
    def __init__(self, bundle: Bundle, config: ScoreConfig):
        self.bundle, self.config = bundle, config
        self.tools = {task: consulted(bundle, config, task) for task in RANKED_TASKS}  # per task, in feature order
        self.primary = primary_tools(bundle, config, self.tools)
        self.unanswered = {task: f"bundle {bundle.uri} has no {kind} for it among {self.tools[task]} "
                                 f"({hint})" for task, kind, hint in (
                                     ("sequential", "primary tool", "ScoreConfig.primary"),
                                     ("direct", "primary tool", "ScoreConfig.primary"),
                                     ("ctr", "CTR tool", "train one: reasonrec train-tools --tools dcnv2,xdeepfm"))
                           if task not in self.primary}
        fitted = bundle.manifest.get("planner")
        if fitted and config.mode in ("planner", "vlm+tools-always"):
            for task in self.primary:  # a planner fitted for other tasks: this one's requests are quarantined
                if not (fitted.get("policies", {}).get(task) or {}).get("aggregator"):
                    self.unanswered[task] = (f"mode {config.mode!r} needs a fitted aggregator for it and bundle "
                                             f"{bundle.uri}'s planner has none (reasonrec fit-planner --tasks {task})")
        self.answered = tuple(t for t in self.primary if t not in self.unanswered)

    def tools_for(self, task: str) -> list[str]:
        return self.tools.get(task, [])

    @classmethod
    def load(cls, bundle_uri: str, config: ScoreConfig) -> "Scoring":
        return cls(Bundle(bundle_uri), config)

    @functools.cached_property
    def vocab(self) -> Vocab:
        return Vocab(self.bundle.item_ids(), offset=1)

    @functools.cached_property
    def horizon(self):
        from reasonrec.horizon import EvidenceHorizon

        return EvidenceHorizon.from_json(self.bundle.read("horizon.json"))

    @functools.cached_property
    def planner(self) -> Planner:
        thresholds = self.horizon.config
        return Planner.from_manifest(self.bundle.manifest, self.primary, self.tools,
                                     Policy(thresholds.tau_low, thresholds.tau_high))

    def check(self) -> None:
        """Fail before the job starts on a setting the bundle cannot honour (a task no request asks for is not one:
        its requests would be quarantined with the reason)."""
        bundle, config = self.bundle, self.config
        named = {task: tool for task, tool in config.primary.items() if tool not in bundle.tool_names}
        unknown = [t for t in config.tools if t not in bundle.tool_names]
        if unknown:
            named["tools"] = unknown
        if named:
            raise ValueError(f"bundle {bundle.uri} has tools {bundle.tool_names} but the score config names "
                             f"{named} (ScoreConfig.primary / tools)")
        fitted = bundle.manifest.get("planner")
        if fitted and config.tools and list(config.tools) != list(fitted["tools"]):
            raise ValueError(f"ScoreConfig.tools {list(config.tools)} differ from the tools the bundle's planner was "
                             f"fitted on {fitted['tools']}: drop the setting or refit with `reasonrec fit-planner`")
        outside = {task: tool for task, tool in config.primary.items() if tool not in self.tools_for(task)}
        if outside:
            raise ValueError(f"primary tool(s) {outside} must be among the task's consulted tools "
                             f"{ {task: self.tools_for(task) for task in outside} }")
        if "horizon.json" not in bundle.manifest["files"]:
            raise ValueError(f"bundle {bundle.uri} has no horizon.json (train it with `reasonrec train-tools`)")
        if config.mode != "tools-only" and "vlm" not in bundle.manifest:
            raise ValueError(f"mode {config.mode!r} needs the VLM but bundle {bundle.uri} has no vlm/ "
                             "(run `reasonrec finetune-vlm`, or score with --mode tools-only)")
        if not self.answered:
            raise ValueError("this job can answer no task: " + "; ".join(
                f"{task}: {why}" for task, why in self.unanswered.items()))
        if config.mode in ("planner", "vlm+tools-always"):
            for task in self.answered:
                self.planner.aggregator(task)  # raises: run `reasonrec fit-planner`


def consulted(bundle: Bundle, config: ScoreConfig, task: str) -> list[str]:
    """The tools whose scores the planner reads for ``task``: the fitted planner's, else the bundle's tools for the
    task (``ScoreConfig.tools`` narrows the ranking tasks' list)."""
    fitted = bundle.manifest.get("planner") or {}
    by_task = fitted.get("tools_by_task") or {}
    if task in by_task:
        return list(by_task[task])
    answering = bundle.tools_for(task)
    if task == "ctr":
        return answering
    if config.tools:
        return list(config.tools)
    return list(fitted["tools"]) if "tools" in fitted else answering


def primary_tools(bundle: Bundle, config: ScoreConfig, tools: dict[str, list[str]]) -> dict[str, str]:
    """The tool that answers each task on route low: the config's choice, else the bundle's record (the primary tool
    its planner was fitted with, else train-tools' best on validation), else, for a bundle older than any record,
    the former defaults. A recorded tool the job does not consult for the task answers nothing."""
    fitted = (bundle.manifest.get("planner") or {}).get("primary") or {}
    recorded = bundle.manifest.get("primary") or {}
    former = {} if fitted or recorded else FORMER_PRIMARY
    chosen = {}
    for task in RANKED_TASKS:
        if task in config.primary:
            chosen[task] = config.primary[task]
            continue
        found = [s[task] for s in (fitted, recorded, former) if s.get(task) in tools.get(task, [])]
        if found:
            chosen[task] = found[0]
    return chosen
