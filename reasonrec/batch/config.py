"""How the nightly job answers and how big its pools are: one typed object, from YAML and flags."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from reasonrec.planner import MODES
from reasonrec.vlm.deliberator import DeliberatorConfig

RANKED_TASKS = ("sequential", "direct", "ctr")  # the tasks a primary tool answers


@dataclasses.dataclass
class ScoreConfig:
    """How the nightly job answers and how big its pools are (YAML ``--config``; flags override)."""

    # Who answers (reasonrec.planner): tools-only (majority vote), vlm-only, vlm+tools-always, planner.
    mode: str = "planner"
    # The classical tool that answers each task on route ``low`` (DESIGN §4), e.g. {direct: bprmf}; a task not named
    # here gets the bundle's record (reasonrec.batch.context.primary_tools).
    primary: dict = dataclasses.field(default_factory=dict)
    tools: tuple[str, ...] = ()  # consulted tools; empty: the fitted planner's, else every tool in the bundle
    shortlist: int = 20  # candidates the VLM ranks: the tools' majority-vote top N (or the request's)
    template: str = "sequential-01"  # the listing template the VLM is asked with (sequential, direct)
    ctr_template: str = "ctr-01"  # the yes/no template it is asked with about each candidate of a ctr request
    # A direct request, in the form the bundle's VLM was tuned on (its examples' direct_form): one listing prompt,
    # or one yes/no prompt per candidate. A bundle tuned before direct_form existed is asked with ``template``.
    direct_template: str = "direct-11"
    direct_yes_no_template: str = "direct-01"
    explain_template: str = "explain-01"  # the explanation template an explain request is asked with
    explain_max_tokens: int = 48  # generated tokens per explanation (greedy)
    deliberator: DeliberatorConfig = dataclasses.field(default_factory=DeliberatorConfig)
    vlm_actors: int = 1
    vlm_batch_size: int = 64  # rows per VLM-actor call (the backend batches inside it)
    max_k: int = 100
    max_history: int = 10_000  # items; a longer history is quarantined (the tools read only the most recent)
    batch_size: int = 1024  # rows per tool-actor call
    horizon_batch_size: int = 4096
    # One torch thread per actor, as many actors as cores: torch's threads meet at a barrier after every op, so
    # any other process on a core (the horizon and planner actors, the writes, Ray itself) stalls both of an
    # actor's threads. On 2 cores 2 x 1 ran the 10x Beauty job 0.98-1.16x the in-process stages, 1 x 2 1.48-1.60x
    # (benchmarks/nightly_job.py, docs/results.md). The CPUs asked are placement tokens: small, so that reads and
    # writes never starve on a small node; on a cluster give each actor its thread's core (tool_actor_cpus: 1).
    tool_actors: int = 2
    tool_actor_cpus: float = 0.25
    horizon_actor_cpus: float = 0.25
    io_cpus: float = 0.25  # shard reads and result writes
    torch_threads: int = 1  # per tool actor: keep actors x threads = the cores they share
    planner_cpus: float = 0.25
    # Custom resources every CPU actor (horizon, tools, planner) asks for, e.g. {"cpu_worker": 0.01} on a cluster
    # whose CPU nodes advertise "cpu_worker" (cluster/aws.yaml): it keeps them off GPU nodes. Ray only prefers that.
    cpu_actor_resources: dict = dataclasses.field(default_factory=dict)

    # How many of each actor and what they ask Ray for: they change how fast a run goes, never what it answers, so a
    # rerun that changes only these resumes the run (reasonrec.batch.job.plan).
    POOLS: ClassVar[tuple[str, ...]] = ("tool_actors", "tool_actor_cpus", "horizon_actor_cpus", "io_cpus",
                                        "torch_threads", "planner_cpus", "vlm_actors", "cpu_actor_resources")

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"ScoreConfig.mode {self.mode!r}: use one of {MODES}")
        for name in ("max_k", "max_history", "batch_size", "horizon_batch_size", "tool_actors", "torch_threads",
                     "shortlist", "vlm_actors", "vlm_batch_size", "explain_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"ScoreConfig.{name} must be >= 1, got {getattr(self, name)}")
        unknown = set(self.primary) - set(RANKED_TASKS)
        if unknown:
            raise ValueError(f"ScoreConfig.primary: task(s) {sorted(unknown)} have no primary tool; tasks ranked by a "
                             f"tool are {RANKED_TASKS}")
