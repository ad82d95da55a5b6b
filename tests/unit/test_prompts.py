import re

import pytest

from reasonrec.prompts.cot import Deliberation, format_target, parse_target
from reasonrec.prompts.templates import (
    ANSWER_FIELDS,
    IMAGE,
    LABELS,
    Item,
    load_templates,
    render,
    templates_for,
    warmup_template,
)

HISTORY = [Item("Rose oil", "s3://b/i/1.png"), Item("Clay mask")]
CANDIDATES = [Item(f"cand {i}", f"/img/{i}.png" if i % 2 else None) for i in range(20)]
VALUES = dict(user="u42", profile="12 purchases, mostly skin care", history=HISTORY, candidates=CANDIDATES,
              item=Item("Night cream", "/img/n.png"), horizon=0.8234, rating=4)


def test_four_tasks_ten_templates_each_with_distinct_texts():
    templates = load_templates()
    assert len(templates) == 50
    for task in ("sequential", "ctr", "explain"):
        texts = [t.text for t in templates_for(task)]
        assert len(texts) == 10 and len(set(texts)) == 10
    assert {t.metric for t in templates_for("ctr")} == {"AUC"}
    # direct: ten yes/no forms about one item, then ten listing forms (the served one is direct-11)
    yes_no, listing = templates_for("direct", listing=False), templates_for("direct", listing=True)
    assert len(yes_no) == len(listing) == 10 and listing[0].id == "direct-11"
    assert len({t.text for t in yes_no + listing}) == 20 and templates_for("sequential", listing=True)
    with pytest.raises(ValueError, match="listing=False"):
        templates_for("sequential", listing=False)


@pytest.mark.parametrize("template", load_templates(), ids=lambda t: t.id)
def test_every_placeholder_is_filled_and_no_template_names_the_answer(template):
    assert not ANSWER_FIELDS & set(template.fields)
    prompt = render(template, **VALUES)
    assert not re.search(r"{\w+}", prompt.text)
    assert prompt.text.count(IMAGE) == len(prompt.images)
    if template.task == "explain":
        assert "horizon" not in template.fields and "4" in prompt.text
    else:
        assert "0.82" in prompt.text
    if "candidates" in template.fields:
        assert prompt.labels == LABELS[:20] and "T) cand 19 <image>" in prompt.text
        assert prompt.images[0] == "s3://b/i/1.png"  # the history comes before the candidates in every template
    elif template.task in ("direct", "ctr"):  # the model has no memory of users: the history is its evidence
        assert prompt.labels == () and "history" in template.fields and "Night cream <image>" in prompt.text
    else:
        assert prompt.labels == () and "Night cream <image>" in prompt.text


@pytest.mark.parametrize("task", ["sequential", "direct", "ctr", "explain"])
def test_warmup_form_shows_the_evidence_and_names_no_answer(task):
    template = warmup_template(task)
    assert not ANSWER_FIELDS & set(template.fields) and template.id == f"{task}-warmup"
    prompt = render(template, **VALUES)
    assert not re.search(r"{\w+}", prompt.text) and prompt.text.count(IMAGE) == len(prompt.images)
    assert "Night cream <image>" in prompt.text or prompt.labels == LABELS[:20]
    if task != "explain":
        assert prompt.text.startswith("Rose oil <image>")
    with pytest.raises(ValueError, match="no warm-up form"):
        warmup_template("summary")


def test_items_with_their_own_tokens_are_listed_and_answered_by_token():
    tokened = [Item(f"cand {i}", None, f"<|item:i{i}|>") for i in range(60)]  # more than the 52 letters
    prompt = render(templates_for("direct", listing=True)[0], **{**VALUES, "candidates": tokened,
                                                                  "history": [Item("Rose oil", None, "<|item:r|>")]})
    assert prompt.labels == tuple(f"<|item:i{i}|>" for i in range(60))
    assert "<|item:i0|> cand 0; <|item:i1|> cand 1;" in prompt.text and "A)" not in prompt.text
    assert "<|item:r|> Rose oil" in prompt.text
    mixed = render(templates_for("sequential")[0], **{**VALUES, "candidates": tokened[:2] + CANDIDATES[:1]})
    assert mixed.labels == LABELS[:3]  # one candidate without a token: letters for all


def test_missing_value_and_too_many_candidates_are_named():
    with pytest.raises(ValueError, match=r"no value for {horizon}"):
        render(templates_for("direct")[0], **{**VALUES, "horizon": None})
    with pytest.raises(ValueError, match="at most 52"):
        render(templates_for("sequential")[0], **{**VALUES, "candidates": CANDIDATES * 3})


@pytest.mark.parametrize("d", [
    Deliberation("consult", "C", 0.8234, "high", ("sasrec", "lightgcn"), ("C", "A"), 0.53),
    Deliberation("delegate", "B", 0.12, "low", ("sasrec",), ("B",), 0.91),
    Deliberation("answer", "yes", 0.5, "medium", confidence=0.7),
    Deliberation("answer", "Rich and soothing;\nworth four stars."),
])
def test_cot_target_round_trip(d):
    text = format_target(d)
    back = parse_target(text)
    assert back.decision == d.decision and back.answer == d.answer and back.tools == d.tools
    assert back.tool_outputs == d.tool_outputs and back.level == d.level
    assert back.horizon == (round(d.horizon, 2) if d.horizon is not None else None)
    assert back.confidence == (round(d.confidence, 2) if d.confidence is not None else None)


def test_cot_target_reads_like_the_design():
    text = format_target(Deliberation("consult", "C", 0.82, "high", ("sasrec", "lightgcn"), ("C", "A"), 0.53))
    assert text == "EH: 0.82 (high); decision: consult sasrec, lightgcn\ntools: sasrec -> C; lightgcn -> A\n" \
                   "answer: C; confidence: 0.53"


@pytest.mark.parametrize("text,message", [
    ("EH: 0.8 (warm); decision: answer\nanswer: A", "line 1"),
    ("decision: consult a, b\ntools: a -> A\nanswer: A", "does not match"),
    ("decision: answer\nresult: A", "answer line"),
])
def test_cot_parser_names_the_bad_line(text, message):
    with pytest.raises(ValueError, match=message):
        parse_target(text)
