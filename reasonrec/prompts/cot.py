"""The chain-of-thought target (paper Fig. A1, kept brief and structured as in its §4 cost study).

    EH: 0.82 (high); decision: consult sasrec, lightgcn
    tools: sasrec -> C; lightgcn -> A
    answer: C; confidence: 0.53

The first line states the evidence horizon and what the agent does with it: ``delegate`` to one tool (low EH),
``answer`` itself (medium), or ``consult`` tools before answering (high). The tools line appears only when tools
ran. Explanation targets have no EH: ``decision: answer`` and the text as the answer.
"""
from __future__ import annotations

import dataclasses
import re

DECISIONS = ("delegate", "answer", "consult")


@dataclasses.dataclass(frozen=True)
class Deliberation:
    decision: str
    answer: str
    horizon: float | None = None
    level: str | None = None  # low / medium / high
    tools: tuple[str, ...] = ()
    tool_outputs: tuple[str, ...] = ()  # one per tool: a label, or "yes 0.79"
    confidence: float | None = None

    def __post_init__(self):
        if self.decision not in DECISIONS:
            raise ValueError(f"decision {self.decision!r} not in {DECISIONS}")
        if self.tool_outputs and len(self.tool_outputs) != len(self.tools):
            raise ValueError(f"{len(self.tools)} tools but {len(self.tool_outputs)} outputs")
        if self.decision != "answer" and not self.tools:
            raise ValueError(f"decision {self.decision!r} needs tools")


def format_context(d: Deliberation) -> str:
    """The lines before the answer: what the planner knows before the VLM answers (horizon, decision, tool outputs).

    At inference these lines are written into the prompt and the VLM is read at the answer label (DESIGN.md §5),
    so the deliberation costs one forward pass; in training they are context, and only the answer is a target.
    """
    head = f"decision: {d.decision}" + (f" {', '.join(d.tools)}" if d.decision != "answer" else "")
    if d.horizon is not None:
        head = f"EH: {d.horizon:.2f} ({d.level}); " + head
    lines = [head]
    if d.tool_outputs:
        lines.append("tools: " + "; ".join(f"{t} -> {o}" for t, o in zip(d.tools, d.tool_outputs)))
    return "\n".join(lines)


def format_target(d: Deliberation) -> str:
    answer = f"answer: {d.answer}" + (f"; confidence: {d.confidence:.2f}" if d.confidence is not None else "")
    return format_context(d) + "\n" + answer


_HEAD = re.compile(r"^(?:EH: (?P<eh>[0-9.]+) \((?P<level>low|medium|high)\); )?"
                   r"decision: (?P<decision>delegate|answer|consult)(?: (?P<tools>.+))?$")
_ANSWER = re.compile(r"^answer: (?P<answer>.*?)(?:; confidence: (?P<conf>[0-9.]+))?$", re.S)


def parse_target(text: str) -> Deliberation:
    """Inverse of ``format_target``; a line that does not fit names itself."""
    lines = text.strip().split("\n")
    head = _HEAD.match(lines[0]) if lines else None
    if head is None:
        raise ValueError(f"CoT line 1 is not 'EH: x (level); decision: ...': {lines[0] if lines else ''!r}")
    tools = tuple(t.strip() for t in head["tools"].split(",")) if head["tools"] else ()
    outputs: tuple[str, ...] = ()
    rest = lines[1:]
    if rest and rest[0].startswith("tools: "):
        pairs = [p.split(" -> ", 1) for p in rest[0][len("tools: "):].split("; ")]
        if any(len(p) != 2 for p in pairs) or tuple(p[0] for p in pairs) != tools:
            raise ValueError(f"CoT tools line does not match the decision's tools {tools}: {rest[0]!r}")
        outputs = tuple(p[1] for p in pairs)
        rest = rest[1:]
    answer = _ANSWER.match("\n".join(rest))
    if answer is None:
        raise ValueError(f"CoT answer line is not 'answer: ...; confidence: p': {chr(10).join(rest)!r}")
    return Deliberation(
        decision=head["decision"], answer=answer["answer"], tools=tools, tool_outputs=outputs,
        horizon=float(head["eh"]) if head["eh"] else None, level=head["level"],
        confidence=float(answer["conf"]) if answer["conf"] else None)
