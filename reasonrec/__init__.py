"""ReasonRec: reasoning-augmented multimodal recommendation at scale (the library; see ``reasonrec.api``).

The verbs and their typed configs load on first use, so ``import reasonrec`` stays light (no torch, no Ray)."""
from __future__ import annotations

import importlib
import logging

__version__ = "0.2.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())  # quiet unless the application configures logging

_EXPORTS = {
    **{verb: "reasonrec.api" for verb in ("synth", "prepare", "train_tools", "finetune_vlm", "fit_planner",
                                           "make_requests", "write_requests", "score", "read_results",
                                           "read_quarantine", "evaluate", "write_report")},
    "Recommender": "reasonrec.serve.recommender",
    "ScoreConfig": "reasonrec.batch.config",
    "TrainToolsConfig": "reasonrec.train.tools",
    "FinetuneConfig": "reasonrec.vlm.finetune",
    "FitPlannerConfig": "reasonrec.train.planner",
    "SyntheticConfig": "reasonrec.data.synthetic",
    "ReportConfig": "reasonrec.report",
    "ServeConfig": "reasonrec.serve.api",
    "DeliberatorConfig": "reasonrec.vlm.deliberator",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'reasonrec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
