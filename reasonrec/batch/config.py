"""How the nightly job answers and how big its pools are: one typed object, from YAML and flags."""
from __future__ import annotations

import dataclasses

from reasonrec.data import schemas
from reasonrec.planner import MODES
from reasonrec.vlm.deliberator import DeliberatorConfig


@dataclasses.dataclass
class ScoreConfig:
    """How the nightly job answers and how big its pools are (YAML ``--config``; flags override)."""

    # Who answers (reasonrec.planner): tools-only (majority vote), vlm-only, vlm+tools-always, planner.
    mode: str = "planner"
    # The classical tool that answers each task on route ``low`` (DESIGN §4).
    primary: dict = dataclasses.field(
        default_factory=lambda: {"sequential": "sasrec", "direct": "lightgcn", "ctr": "lightgcn"})
    tools: tuple[str, ...] = ()  # consulted tools; empty: the fitted planner's, else every tool in the bundle
    shortlist: int = 20  # candidates the VLM ranks: the tools' majority-vote top N (or the request's)
    template: str = "sequential-01"  # the listing template the VLM is asked with
    deliberator: DeliberatorConfig = dataclasses.field(default_factory=DeliberatorConfig)
    vlm_actors: int = 1
    vlm_batch_size: int = 64  # rows per VLM-actor call (the backend batches inside it)
    max_k: int = 100
    max_history: int = 10_000  # items; a longer history is quarantined (the tools read only the most recent)
    batch_size: int = 1024  # rows per tool-actor call
    horizon_batch_size: int = 4096
    # Measured on 2 cores: one actor with 2 torch threads beats 2 x 1 and 2 x 2 (benchmarks/nightly_job.py).
    tool_actors: int = 1
    tool_actor_cpus: float = 0.5
    horizon_actor_cpus: float = 0.25
    io_cpus: float = 0.25  # shard reads and result writes
    torch_threads: int = 2  # per tool actor: keep actors x threads = the cores they share
    planner_cpus: float = 0.25
    # Custom resources every CPU actor (horizon, tools, planner) asks for, e.g. {"cpu_worker": 0.01} on a cluster
    # whose CPU nodes advertise "cpu_worker" (cluster/aws.yaml): it keeps them off GPU nodes. Ray only prefers that.
    cpu_actor_resources: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"ScoreConfig.mode {self.mode!r}: use one of {MODES}")
        for name in ("max_k", "max_history", "batch_size", "horizon_batch_size", "tool_actors", "torch_threads", "shortlist",
                     "vlm_actors", "vlm_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ScoreConfig.{name} must be >= 1, got {getattr(self, name)}")
        unknown = set(self.primary) - set(schemas.TASKS)
        if unknown:
            raise ValueError(f"ScoreConfig.primary: unknown task(s) {sorted(unknown)}; tasks are {schemas.TASKS}")


def consulted_tools(bundle, config: ScoreConfig) -> list[str]:
    """The tools whose scores the planner reads, in the order of its aggregator's features."""
    fitted = bundle.manifest.get("planner")
    if config.tools:
        return list(config.tools)
    return list(fitted["tools"]) if fitted else bundle.tool_names


def make_planner(bundle, config: ScoreConfig):
    from reasonrec.horizon import EvidenceHorizon
    from reasonrec.planner import Planner, Policy

    horizon = EvidenceHorizon.from_json(bundle.read("horizon.json")).config
    return Planner.from_manifest(bundle.manifest, config.primary, consulted_tools(bundle, config),
                                 Policy(horizon.tau_low, horizon.tau_high))


def check_bundle(bundle, config: ScoreConfig) -> None:
    """Fail before the job starts when the bundle cannot answer a configured task in the configured mode."""
    tools = consulted_tools(bundle, config)
    missing = {task: tool for task, tool in config.primary.items() if tool not in bundle.tool_names}
    unknown = [t for t in tools if t not in bundle.tool_names]
    if unknown:
        missing["tools"] = unknown
    if missing:
        raise ValueError(f"bundle {bundle.uri} has tools {bundle.tool_names} but the score config names "
                         f"{missing} (ScoreConfig.primary / tools)")
    fitted = bundle.manifest.get("planner")
    if fitted and config.tools and list(config.tools) != list(fitted["tools"]):
        raise ValueError(f"ScoreConfig.tools {list(config.tools)} differ from the tools the bundle's planner was "
                         f"fitted on {fitted['tools']}: drop the setting or refit with `reasonrec fit-planner`")
    absent_primary = sorted(set(config.primary.values()) - set(tools))
    if absent_primary:
        raise ValueError(f"primary tool(s) {absent_primary} must be among the consulted tools {tools}")
    if "horizon.json" not in bundle.manifest["files"]:
        raise ValueError(f"bundle {bundle.uri} has no horizon.json (train it with `reasonrec train-tools`)")
    if config.mode != "tools-only" and "vlm" not in bundle.manifest:
        raise ValueError(f"mode {config.mode!r} needs the VLM but bundle {bundle.uri} has no vlm/ "
                         "(run `reasonrec finetune-vlm`, or score with --mode tools-only)")
    if config.mode in ("planner", "vlm+tools-always"):
        planner = make_planner(bundle, config)
        for task in config.primary:
            planner.aggregator(task)  # raises: run `reasonrec fit-planner`
