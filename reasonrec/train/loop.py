"""The training loop shared by every tool; runs in-process (tests) or inside a Ray Train worker."""
from __future__ import annotations

import contextlib
import copy
import logging
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from reasonrec.data.prepared import EvalSet, Sequences
from reasonrec.evaluator import evaluate
from reasonrec.tools.base import Tool

logger = logging.getLogger(__name__)


def fit(tool: Tool, train: Sequences, valid: EvalSet | None = None, *, refit_on: Sequences | None = None,
        module: nn.Module | None = None, shard: tuple[int, int] = (0, 1),
        holdout: Callable[[Tool], None] | None = None) -> dict:
    """Train ``tool`` on ``train``; early-stop on its validation ``selection`` figure (NDCG@10 for ranking tools, AUC
    for CTR tools) and keep the best weights.

    With ``tool.config.refit`` and ``refit_on`` (train + validation interactions), the chosen number of epochs is
    then rerun from the initial weights on ``refit_on``; ``holdout(tool)`` sees the model before that refit (one
    that has not seen the validation items: the planner is fitted on them). ``module`` is what the loss is computed
    through (``tool``
    or its DDP wrapper); ``shard`` = (rank, world size) selects this worker's users.
    """
    cfg = tool.config
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed + shard[0])
    initial = copy.deepcopy(tool.state_dict())
    tool.attach(train)
    best = {"epoch": 0}
    if tool.trainable:
        mine = lambda seqs: seqs.select(np.arange(shard[0], len(seqs), shard[1]))  # noqa: E731
        with deterministic():
            best = _train(tool, module or tool, mine(train), valid, cfg.epochs, rng)
            if cfg.refit and refit_on is not None and valid is not None:
                if holdout is not None:
                    tool.finalize()
                    tool.eval()
                    holdout(tool)
                logger.info(f"[{tool.name}] refit on train+valid for {best['epoch']} epochs")
                tool.load_state_dict(initial)
                tool.attach(refit_on)
                _train(tool, module or tool, mine(refit_on), None, best["epoch"], rng)
    tool.finalize()
    tool.eval()
    return best


@contextlib.contextmanager
def deterministic():
    """Torch's deterministic kernels while a tool trains: embedding gradients are otherwise summed in thread order,
    and two trainings of BPR-MF from one seed differed by up to 5e-6 (enough to move the planner's thresholds
    fitted on them). No cost measured on CPU (docs/results.md); ``warn_only``: a GPU op without such a kernel warns."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _train(tool, module, train, valid, epochs, rng) -> dict:
    cfg = tool.config
    optimizer = torch.optim.Adam(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    key = tool.selection
    best, best_state, stale = {"epoch": 0, key: -float("inf")}, None, 0
    for epoch in range(1, epochs + 1):
        start, losses = time.perf_counter(), []
        module.train()
        batches = list(tool.training_batches(train, rng))
        for batch in batches[:_common_count(len(batches))]:
            optimizer.zero_grad(set_to_none=True)
            loss = module(batch)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        metrics = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else 0.0}
        if valid is not None and (epoch % cfg.eval_every == 0 or epoch == epochs):
            tool.eval()
            metrics.update(validation(tool, valid))
            if metrics[key] > best[key]:
                best, best_state, stale = dict(metrics), copy.deepcopy(tool.state_dict()), 0
            else:
                stale += 1
        metrics["seconds"] = time.perf_counter() - start
        if epoch % cfg.eval_every == 0 or epoch == epochs:
            logger.info(f"[{tool.name}] " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                                     for k, v in metrics.items()))
        if valid is not None and stale >= cfg.patience:
            break
    if best_state is not None:
        tool.load_state_dict(best_state)
    return best if valid is not None else {"epoch": epochs}


def validation(tool: Tool, valid) -> dict:
    """A tool's validation figures, ``tool.selection`` among them: its own (CTR tools), else the ranking evaluator."""
    return tool.validate(valid) if hasattr(tool, "validate") else evaluate(tool.score, valid, tool.config.val_task)


def _common_count(n_batches: int) -> int:
    """Under DDP every rank must run the same number of steps, or the last all-reduce waits forever."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return n_batches
    count = torch.tensor([n_batches])
    torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MIN)
    return int(count.item())
