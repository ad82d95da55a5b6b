"""How the nightly job answers and how big its pools are: one typed object, from YAML and flags."""
from __future__ import annotations

import dataclasses

from reasonrec.data import schemas


@dataclasses.dataclass
class ScoreConfig:
    """How the nightly job answers and how big its pools are (YAML ``--config``; flags override)."""

    # The classical tool that answers each task (DESIGN §4, route ``low``; tools-only until the planner).
    primary: dict = dataclasses.field(
        default_factory=lambda: {"sequential": "sasrec", "direct": "lightgcn", "ctr": "lightgcn"})
    max_k: int = 100
    batch_size: int = 1024  # rows per tool-actor call
    horizon_batch_size: int = 4096
    # Measured on 2 cores: one actor with 2 torch threads beats 2 x 1 and 2 x 2 (benchmarks/nightly_job.py).
    tool_actors: int = 1
    tool_actor_cpus: float = 0.5
    horizon_actor_cpus: float = 0.25
    io_cpus: float = 0.25  # shard reads and result writes
    torch_threads: int = 2  # per tool actor: keep actors x threads = the cores they share

    def __post_init__(self):
        for name in ("max_k", "batch_size", "horizon_batch_size", "tool_actors", "torch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"ScoreConfig.{name} must be >= 1, got {getattr(self, name)}")
        unknown = set(self.primary) - set(schemas.TASKS)
        if unknown:
            raise ValueError(f"ScoreConfig.primary: unknown task(s) {sorted(unknown)}; tasks are {schemas.TASKS}")


def check_bundle(bundle, config: ScoreConfig) -> None:
    """Fail before the job starts when the bundle cannot answer a configured task."""
    missing = {task: tool for task, tool in config.primary.items() if tool not in bundle.tool_names}
    if missing:
        raise ValueError(f"bundle {bundle.uri} has tools {bundle.tool_names} but the score config names "
                         f"{missing} (ScoreConfig.primary)")
    if "horizon.json" not in bundle.manifest["files"]:
        raise ValueError(f"bundle {bundle.uri} has no horizon.json (train it with `reasonrec train-tools`)")
