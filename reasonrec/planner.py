"""The risk-aware planner (paper §3 Act, Fig. 3; DESIGN.md §4): route a row by its evidence horizon, then turn
the tools' and the VLM's candidate scores into one ranking. Plain numpy, no Ray: the nightly job and Ray Serve
call the same object.

Scores are over a row's shortlist of N candidates (the tools' majority-vote top N, or the request's candidates):
``tool_scores`` (T, R, N) raw tool scores, -inf on padding; ``vote`` (R, N) the majority vote; ``vlm`` (R, N) the
VLM's label probabilities, NaN where it was not asked.

Who answers a row (its ``path``):
    tool       the task's primary tool alone (route low in ``planner`` mode)
    vote       the tools' majority vote (mode ``tools-only``; route low when the fitted policy says so)
    vlm        the VLM alone (route medium when confident; mode ``vlm-only``)
    aggregate  the VLM, then the tools, combined by the fitted aggregator (route high, escalations, and mode
               ``vlm+tools-always``)
"""
from __future__ import annotations

import dataclasses

import numpy as np

from reasonrec.horizon import route_index
from reasonrec.scores import minmax

MODES = ("tools-only", "vlm-only", "vlm+tools-always", "planner")
PATHS = ("tool", "vote", "vlm", "aggregate")
ROUTES = np.array(["low", "medium", "high"], dtype=object)


@dataclasses.dataclass
class Policy:
    """One task's fitted thresholds and aggregator (``reasonrec fit-planner`` stores them in the bundle)."""

    tau_low: float = 0.3
    tau_high: float = 0.7
    kappa: float = 0.0  # a medium row whose VLM confidence is below kappa escalates to the aggregator
    aggregator: dict | None = None  # Aggregator.to_dict()
    low: str = "tool"  # who answers route low: the task's primary tool, or the consulted tools' majority "vote"
    # The same aggregator fitted without the VLM's evidence: the ablation that says what the VLM adds (fit-planner)
    tools_aggregator: dict | None = None

    def __post_init__(self):
        if self.low not in ("tool", "vote"):
            raise ValueError(f"planner policy low={self.low!r}: use 'tool' (the primary tool) or 'vote'")
        if not 0.0 <= self.tau_low <= self.tau_high <= 1.0 + 1e-9:
            raise ValueError(f"planner policy needs 0 <= tau_low <= tau_high <= 1, got {self.tau_low}, {self.tau_high}")


def reciprocal_rank(scores: np.ndarray) -> np.ndarray:
    """1 / (1 + rank) of each entry within its row (rank 0 = best); padding (-inf or NaN) -> 0."""
    s = np.nan_to_num(scores, nan=-np.inf, neginf=-np.inf)
    ranks = np.argsort(np.argsort(-s, axis=-1, kind="stable"), axis=-1, kind="stable")
    return np.where(np.isfinite(s), 1.0 / (1.0 + ranks), 0.0)


class Aggregator:
    """Logistic regression over per-candidate evidence: is this candidate the user's next item (``ranking``), or
    will the user click it (``ctr``: the output is the calibrated click probability)?

    Ranking features: the VLM's probability (and its log, whether it is the VLM's top, x confidence, x horizon), and
    for each tool and for their majority vote the min-max score and reciprocal rank within the shortlist (and rank x
    horizon: how much to trust a tool can depend on how cold the user is). CTR features keep the absolute scales a
    probability needs: the VLM's P(yes) and its log-odds (x horizon), each CTR tool's logit and the vote's log-odds.
    Fitted with scikit-learn on validation rows; applied with numpy (the weights are JSON in the bundle manifest).
    """

    def __init__(self, tools: list[str], mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: float,
                 kind: str = "ranking"):
        self.tools, self.kind = list(tools), kind
        self.mean, self.scale, self.coef, self.intercept = mean, scale, coef, float(intercept)

    @staticmethod
    def feature_names(tools: list[str], kind: str = "ranking") -> list[str]:
        if kind == "ctr":
            return ["vlm_p", "vlm_logit", "vlm_logit_x_horizon", *(f"{t}:logit" for t in tools), "vote:logit"]
        per_tool = [f"{t}:{f}" for t in [*tools, "vote"] for f in ("minmax", "rr", "rr_x_horizon")]
        return ["vlm_p", "vlm_logp", "vlm_top", "vlm_top_x_conf", "vlm_p_x_horizon", *per_tool]

    @staticmethod
    def features(tool_scores: np.ndarray, vote: np.ndarray, vlm: np.ndarray, confidence: np.ndarray,
                 horizon: np.ndarray, kind: str = "ranking") -> np.ndarray:
        """(R, N, F) features; ``tool_scores`` (T, R, N) in the aggregator's tool order, ``vote`` (R, N)."""
        if kind == "ctr":
            return ctr_features(tool_scores, vote, vlm, horizon)
        p = np.nan_to_num(vlm, nan=0.0)
        top = (p == p.max(axis=1, keepdims=True)) & (p > 0)
        conf, c = np.nan_to_num(confidence, nan=0.0)[:, None], horizon[:, None]  # NaN: the VLM was not asked
        columns = [p, np.log(p + 1e-6), top, top * conf, p * c]
        for scores in [*tool_scores, vote]:
            rr = reciprocal_rank(scores)
            columns += [minmax(scores), rr, rr * c]
        return np.stack([np.broadcast_to(col, p.shape) for col in columns], axis=-1).astype(np.float64)

    @classmethod
    def fit(cls, tools: list[str], x: np.ndarray, y: np.ndarray, c: float = 1.0, kind: str = "ranking"):
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        if len(np.unique(y)) < 2:
            raise ValueError(f"aggregator fit needs positive and negative candidates; got {int(y.sum())} of {len(y)}")
        scaler = StandardScaler().fit(x)
        model = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(x), y)
        scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
        return cls(tools, scaler.mean_, scale, model.coef_[0], model.intercept_[0], kind)

    def logits(self, tool_scores: np.ndarray, vote: np.ndarray, vlm: np.ndarray, confidence: np.ndarray,
               horizon: np.ndarray) -> np.ndarray:
        x = self.features(tool_scores, vote, vlm, confidence, horizon, self.kind)
        out = ((x - self.mean) / self.scale) @ self.coef + self.intercept
        return np.where(np.isfinite(tool_scores[0]), out, -np.inf)

    def to_dict(self) -> dict:
        return {"tools": self.tools, "kind": self.kind, "features": self.feature_names(self.tools, self.kind),
                "mean": self.mean.tolist(), "scale": self.scale.tolist(), "coef": self.coef.tolist(),
                "intercept": self.intercept}

    @classmethod
    def from_dict(cls, d: dict) -> "Aggregator":
        kind = d.get("kind", "ranking")
        if d["features"] != cls.feature_names(d["tools"], kind):
            raise ValueError(f"aggregator features {d['features']} do not match this version's "
                             f"{cls.feature_names(d['tools'], kind)}: refit with `reasonrec fit-planner`")
        return cls(d["tools"], *(np.array(d[k], dtype=np.float64) for k in ("mean", "scale", "coef")), d["intercept"],
                   kind)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def ctr_features(tool_scores: np.ndarray, vote: np.ndarray, vlm: np.ndarray, horizon: np.ndarray) -> np.ndarray:
    """The CTR aggregator's features: ``tool_scores`` are the CTR tools' logits, ``vote`` their mean probability and
    ``vlm`` the VLM's P(yes) per candidate (NaN where it was not asked: 0.5, no opinion)."""
    p = np.nan_to_num(vlm, nan=0.5)
    columns = [p, logit(p), logit(p) * horizon[:, None]]
    columns += [np.nan_to_num(s, neginf=0.0, posinf=0.0) for s in tool_scores]
    columns.append(logit(np.nan_to_num(vote, neginf=0.0)))
    return np.stack([np.broadcast_to(col, p.shape) for col in columns], axis=-1).astype(np.float64)


@dataclasses.dataclass
class Decision:
    path: np.ndarray  # (R,) one of PATHS
    scores: np.ndarray  # (R, N) final shortlist scores (the tool path ranks by the primary tool instead)
    confidence: np.ndarray  # (R,)
    vlm_called: np.ndarray  # (R,) bool
    escalated: np.ndarray  # (R,) bool: medium rows sent to the aggregator for low VLM confidence
    consulted: np.ndarray  # (R, T) bool: tools whose scores decided the answer
    overrode: np.ndarray  # (R,) bool: tools were consulted, the VLM disagreed with their vote, and the VLM won


def softmax_top(scores: np.ndarray) -> np.ndarray:
    finite = np.isfinite(scores)
    shifted = np.where(finite, scores - np.where(finite, scores, -np.inf).max(axis=1, keepdims=True), -np.inf)
    e = np.exp(shifted)
    return (e.max(axis=1) / np.maximum(e.sum(axis=1), 1e-30)).astype(np.float32)


class Planner:
    def __init__(self, tools: dict[str, list[str]], primary: dict[str, str], policies: dict[str, Policy],
                 default: Policy | None = None):
        self.tools = {task: list(names) for task, names in tools.items()}  # per task: the T axis of tool_scores
        self.primary = dict(primary)
        self.policies = dict(policies)
        self.default = default or Policy()  # tasks without a fitted policy
        for task, policy in self.policies.items():
            if policy.aggregator and policy.aggregator["tools"] != self.tools_for(task):
                raise ValueError(f"planner for {task}: aggregator fitted on tools {policy.aggregator['tools']}, "
                                 f"the job consults {self.tools_for(task)}")
        self._aggregators = {t: Aggregator.from_dict(p.aggregator) for t, p in self.policies.items() if p.aggregator}

    def tools_for(self, task: str) -> list[str]:
        return self.tools.get(task, [])

    def policy(self, task: str) -> Policy:
        return self.policies.get(task) or self.default

    def routes(self, task: np.ndarray, horizon: np.ndarray) -> np.ndarray:
        tau_low = self._per_task(task, lambda t: self.policy(t).tau_low).astype(np.float64)
        tau_high = self._per_task(task, lambda t: self.policy(t).tau_high).astype(np.float64)
        return ROUTES[route_index(horizon, tau_low, tau_high)]

    def paths_before_vlm(self, mode: str, task: np.ndarray, routes: np.ndarray) -> np.ndarray:
        """Who answers each row before the VLM's confidence is known (medium rows may still escalate)."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: use one of {MODES}")
        fixed = {"tools-only": "vote", "vlm-only": "vlm", "vlm+tools-always": "aggregate"}
        if mode in fixed:
            return np.full(len(routes), fixed[mode], dtype=object)
        path = np.full(len(routes), "aggregate", dtype=object)
        path[routes == "medium"] = "vlm"
        low = routes == "low"
        path[low] = self._per_task(task[low], lambda t: self.policy(t).low)
        return path

    def aggregator(self, task: str) -> Aggregator:
        fitted = self._aggregators.get(task)
        if fitted is None:
            raise ValueError(f"no fitted aggregator for task {task!r}: run `reasonrec fit-planner` on this bundle")
        return fitted

    def decide(self, mode: str, task: np.ndarray, plan: np.ndarray, horizon: np.ndarray, tool_scores: np.ndarray,
               vote: np.ndarray, vlm: np.ndarray, confidence: np.ndarray, tool_confidence: np.ndarray) -> Decision:
        """Rows of one task. ``plan``: each row's path before the VLM (``paths_before_vlm``, decided by the horizon
        stage); ``confidence``: the VLM's (NaN where not asked); ``tool_confidence``: the primary tool's own. In
        planner mode a row planned for the VLM alone (route medium) escalates when the VLM's confidence is below
        kappa."""
        path = np.asarray(plan, dtype=object)
        kappa = self._per_task(task, lambda t: self.policy(t).kappa).astype(np.float64)
        escalated = (mode == "planner") & (path == "vlm") & (np.nan_to_num(confidence, nan=0.0) < kappa)
        path = np.where(escalated, "aggregate", path).astype(object)
        rows, n = vote.shape
        scores = np.full((rows, n), -np.inf)
        out_conf = np.zeros(rows, dtype=np.float32)

        tool_rows = path == "tool"
        primary = self._primary_index(task[tool_rows])
        scores[tool_rows] = tool_scores[primary, np.flatnonzero(tool_rows)] if tool_rows.any() else scores[tool_rows]
        out_conf[tool_rows] = tool_confidence[tool_rows]
        vote_rows = path == "vote"
        scores[vote_rows] = vote[vote_rows]
        # Majority-vote confidence: the share of tools whose own top is the vote's top.
        tops = np.argmax(np.nan_to_num(tool_scores, neginf=-1e30), axis=2)  # (T, R)
        vote_top = np.argmax(np.nan_to_num(vote, neginf=-1e30), axis=1)
        out_conf[vote_rows] = (tops == vote_top[None, :]).mean(axis=0)[vote_rows]
        vlm_rows = path == "vlm"
        scores[vlm_rows] = np.where(np.isfinite(vote[vlm_rows]), np.nan_to_num(vlm[vlm_rows], nan=0.0), -np.inf)
        out_conf[vlm_rows] = confidence[vlm_rows]
        agg_rows = path == "aggregate"
        for name in np.unique(task[agg_rows]) if agg_rows.any() else ():
            r = agg_rows & (task == name)
            aggregator = self.aggregator(name)
            logits = aggregator.logits(tool_scores[:, r], vote[r], vlm[r], confidence[r], horizon[r])
            if aggregator.kind == "ctr":  # a calibrated click probability per candidate
                scores[r] = np.where(np.isfinite(logits), 1 / (1 + np.exp(-np.clip(logits, -500, 500))), -np.inf)
                out_conf[r] = np.nan_to_num(scores[r], neginf=0.0).max(axis=1)
            else:
                scores[r] = logits
                out_conf[r] = softmax_top(logits)

        consulted = np.zeros((rows, tool_scores.shape[0]), dtype=bool)
        consulted[np.flatnonzero(tool_rows), primary] = True
        consulted[vote_rows | agg_rows] = True
        vlm_top = np.argmax(np.nan_to_num(vlm, nan=-1.0), axis=1)
        final_top = np.argmax(np.nan_to_num(scores, neginf=-1e30), axis=1)
        overrode = agg_rows & (vlm_top != vote_top) & (final_top == vlm_top)
        return Decision(path, scores, out_conf, vlm_rows | agg_rows, escalated, consulted, overrode)

    def by_tool(self, task: np.ndarray, tool_confidence: np.ndarray) -> Decision:
        """What ``decide`` gives rows planned for the primary tool alone (route low answered by the tool), from the
        one signal such a row has: the tool's confidence. ``scores`` is empty: these rows keep the tool's ranking."""
        rows = len(task)
        consulted = np.zeros((rows, len(self.tools_for(task[0])) if rows else 0), dtype=bool)
        consulted[np.arange(rows), self._primary_index(task)] = True
        none = np.zeros(rows, dtype=bool)
        return Decision(np.full(rows, "tool", dtype=object), np.zeros((rows, 0)),
                        np.asarray(tool_confidence, dtype=np.float32), none, none, consulted, none)

    def _primary_index(self, task: np.ndarray) -> np.ndarray:
        def index(t: str) -> int:
            if self.primary.get(t) not in self.tools_for(t):
                raise ValueError(f"primary tool {self.primary.get(t)!r} of task {t!r} is not among the consulted "
                                 f"tools {self.tools_for(t)}")
            return self.tools_for(t).index(self.primary[t])

        return self._per_task(task, index).astype(np.int64)

    @staticmethod
    def _per_task(task: np.ndarray, value) -> np.ndarray:
        """``value(task)`` for every row, computed once per distinct task."""
        if not len(task):
            return np.zeros(0, dtype=object)
        if (task == task[0]).all():  # one task, e.g. a served request: no sort of strings
            return np.full(len(task), value(task[0]), dtype=object)
        names, inverse = np.unique(np.asarray(task, dtype=str), return_inverse=True)
        return np.array([value(n) for n in names], dtype=object)[inverse.reshape(-1)]

    # -- persistence: the ``planner`` section of the bundle manifest
    def to_dict(self) -> dict:
        return {"tools_by_task": self.tools, "policies": {t: dataclasses.asdict(p) for t, p in self.policies.items()}}

    @classmethod
    def from_manifest(cls, manifest: dict, primary: dict[str, str], tools: dict[str, list[str]],
                      default: Policy) -> "Planner":
        """The bundle's fitted policies (``tools``: the consulted tools per task, ``Scoring.tools``); without a
        fitted planner, ``default`` thresholds (the horizon's) and no aggregator."""
        fitted = manifest.get("planner") or {}
        return cls(tools, primary, {t: Policy(**p) for t, p in fitted.get("policies", {}).items()}, default)
