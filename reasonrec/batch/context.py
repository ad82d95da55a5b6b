"""What the stages of one scoring process read from the bundle, resolved and loaded once.

The in-process pipeline and a Serve replica share one ``Scoring`` between their stages; each Ray actor builds its
own. It also decides, before any row is read, which tasks this job can answer (those with a primary tool):
requests for the others are quarantined with the reason.
"""
from __future__ import annotations

import functools

from reasonrec.batch.config import RANKED_TASKS, ScoreConfig
from reasonrec.bundle import Bundle
from reasonrec.data.vocab import Vocab
from reasonrec.planner import Planner, Policy

# What answered each task before bundles recorded their own choice (train-tools now records the best tool on
# validation): a bundle trained earlier keeps its answers.
FORMER_PRIMARY = {"sequential": "sasrec", "direct": "lightgcn", "ctr": "lightgcn"}


class Scoring:
    def __init__(self, bundle: Bundle, config: ScoreConfig):
        self.bundle, self.config = bundle, config
        fitted = bundle.manifest.get("planner")
        if config.tools:
            self.tools = list(config.tools)  # the tools whose scores the planner reads, in its features' order
        else:
            self.tools = list(fitted["tools"]) if fitted else bundle.tool_names
        self.primary = primary_tools(bundle, config, self.tools)
        self.answered = tuple(self.primary)
        self.unanswered = {task: f"bundle {bundle.uri} has no primary tool for it among {self.tools} "
                                 "(ScoreConfig.primary)" for task in RANKED_TASKS if task not in self.primary}

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
        unknown = [t for t in self.tools if t not in bundle.tool_names]
        if unknown:
            named["tools"] = unknown
        if named:
            raise ValueError(f"bundle {bundle.uri} has tools {bundle.tool_names} but the score config names "
                             f"{named} (ScoreConfig.primary / tools)")
        fitted = bundle.manifest.get("planner")
        if fitted and config.tools and list(config.tools) != list(fitted["tools"]):
            raise ValueError(f"ScoreConfig.tools {list(config.tools)} differ from the tools the bundle's planner was "
                             f"fitted on {fitted['tools']}: drop the setting or refit with `reasonrec fit-planner`")
        outside = sorted({tool for tool in config.primary.values()} - set(self.tools))
        if outside:
            raise ValueError(f"primary tool(s) {outside} must be among the consulted tools {self.tools}")
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


def primary_tools(bundle: Bundle, config: ScoreConfig, consulted: list[str]) -> dict[str, str]:
    """The tool that answers each task on route low: the config's choice, else the bundle's record (the primary
    tools its planner was fitted with, else train-tools' best on validation), else, for a bundle older than that
    record, the former defaults. A recorded tool the job does not consult answers nothing."""
    fitted = bundle.manifest.get("planner") or {}
    recorded = fitted.get("primary") or bundle.manifest.get("primary") or FORMER_PRIMARY
    chosen = {**{task: tool for task, tool in recorded.items() if tool in consulted}, **config.primary}
    return {task: chosen[task] for task in RANKED_TASKS if task in chosen}
