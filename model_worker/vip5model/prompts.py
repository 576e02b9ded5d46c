"""Multimodal personalized prompts: templates for the three task families, rendered into `Prompt`s.

In: user id, item ids (history, candidates, one item) and optional target / side fields.
Out: `Prompt(task, template_id, source, image_item_ids, target)`, where `source` is plain text with
IDs written as text ("user_12", "1234", "item_1234") and one image marker (the tokenizer's image
token, "<image>" by default) right after every item that gets image tokens; `image_item_ids` lists
those items in the order their markers appear. The encoder (`encoding.py`) expands each marker
into k placeholders and swaps in the image mapping network's output.

Families (templates held out for unseen-prompt evaluation are marked `held_out`):
  sequential  user + history -> next item id          (A-*)
  direct      user (+ history) + candidates -> item id (B-5..B-9), or user + item -> yes/no (B-1, B-2)
  explanation user + item (+ star rating) -> review-style text (C-*)
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

FAMILIES = ("sequential", "direct", "explanation")
IMAGE_MARKER = "<image>"


@dataclass(frozen=True)
class Template:
    template_id: str
    family: str
    source: str
    target: str  # "item" | "yes_no" | "text"
    held_out: bool = False

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(name for _, name, _, _ in string.Formatter().parse(self.source) if name)


@dataclass(frozen=True)
class Prompt:
    task: str
    template_id: str
    source: str
    image_item_ids: tuple[str, ...]
    target: str = ""


_T = Template
TEMPLATES: dict[str, Template] = {
    t.template_id: t
    for t in [
        _T("A-1", "sequential", "Given the following purchase history of user_{user_id} : {history} "
           "predict next possible item to be purchased by the user ?", "item"),
        _T("A-2", "sequential", "I find the purchase history list of user_{user_id} : {history} "
           "I wonder what is the next item to recommend to the user . Can you help me decide ?", "item"),
        _T("A-3", "sequential", "Here is the purchase history list of user_{user_id} : {history} "
           "try to recommend next item to the user", "item"),
        _T("A-9", "sequential", "According to the purchase history of user_{user_id} : {history} "
           "Can you recommend the next possible item to the user ?", "item", held_out=True),
        _T("B-1", "direct", "Will user_{user_id} likely to interact with item_{item} ?", "yes_no"),
        _T("B-2", "direct", "Shall we recommend item_{item} to user_{user_id} ?", "yes_no"),
        _T("B-5", "direct", "Which item of the following to recommend for user_{user_id} ? {candidates}", "item"),
        _T("B-6", "direct", "Choose the best item from the candidates to recommend for user_{user_id} ? "
           "{candidates}", "item"),
        _T("B-7", "direct", "user_{user_id} has purchased {history} . Pick the most suitable item from "
           "the following list for the user : {candidates}", "item"),
        _T("B-8", "direct", "We want to make recommendation for user_{user_id} . Select the best item "
           "from these candidates : {candidates}", "item", held_out=True),
        _T("B-9", "direct", "Given that user_{user_id} bought {history} , which of these items comes "
           "next : {candidates}", "item", held_out=True),
        _T("C-1", "explanation", "Generate an explanation for user_{user_id} about this product : "
           "item_{item}", "text"),
        _T("C-2", "explanation", "What would user_{user_id} say about item_{item} ?", "text"),
        _T("C-3", "explanation", "Help user_{user_id} generate a {star_rating}-star explanation about "
           "this product : item_{item}", "text"),
        _T("C-11", "explanation", "Tell me why user_{user_id} would like item_{item}", "text", held_out=True),
        _T("C-12", "explanation", "Generate a {star_rating}-star explanation for user_{user_id} about "
           "item_{item}", "text", held_out=True),
    ]
}


def templates(family: str, *, held_out: bool | None = None, usable_with: Iterable[str] | None = None):
    """Templates of a family; `held_out` filters seen/unseen; `usable_with` keeps those whose fields
    are all available (e.g. drop star-rating templates when the data has no ratings)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    have = None if usable_with is None else set(usable_with)
    return [
        t for t in TEMPLATES.values()
        if t.family == family
        and (held_out is None or t.held_out == held_out)
        and (have is None or t.fields <= have)
    ]


def _item_list(item_ids: Sequence[str], separator: str) -> str:
    return f" {separator} ".join(f"{item} {IMAGE_MARKER}" for item in item_ids)


def _template(template: Template | str, family: str, target: str | None = None) -> Template:
    t = TEMPLATES[template] if isinstance(template, str) else template
    if t.family != family or (target is not None and t.target != target):
        raise ValueError(f"template {t.template_id} is a {t.family}/{t.target} template, not {family}")
    return t


def sequential_prompt(template, user_id, history: Sequence, target_item=None, *, separator: str = ",") -> Prompt:
    """Next item from the history; history items are written as bare ids, each with an image."""
    t = _template(template, "sequential", "item")
    history = [str(i) for i in history]
    source = t.source.format(user_id=user_id, history=_item_list(history, separator))
    target = "" if target_item is None else str(target_item)
    return Prompt("sequential", t.template_id, source, tuple(history), target)


def direct_prompt(template, user_id, candidates: Sequence, target_item=None, *, history: Sequence = ()) -> Prompt:
    """Choose from a candidate list; the target is the chosen item's id. History items (for templates
    that use them) come first in `image_item_ids`, then the candidates."""
    t = _template(template, "direct", "item")
    candidates = [str(i) for i in candidates]
    history = [str(i) for i in history] if "history" in t.fields else []
    source = t.source.format(
        user_id=user_id, candidates=_item_list(candidates, ","), history=_item_list(history, ",")
    )
    target = "" if target_item is None else str(target_item)
    return Prompt("direct", t.template_id, source, tuple(history + candidates), target)


def direct_yes_no_prompt(template, user_id, item_id, answer: bool | None = None) -> Prompt:
    t = _template(template, "direct", "yes_no")
    source = t.source.format(user_id=user_id, item=f"{item_id} {IMAGE_MARKER}")
    target = "" if answer is None else ("yes" if answer else "no")
    return Prompt("direct", t.template_id, source, (str(item_id),), target)


def explanation_prompt(template, user_id, item_id, explanation: str | None = None, *, star_rating=None) -> Prompt:
    t = _template(template, "explanation", "text")
    if "star_rating" in t.fields and star_rating is None:
        raise ValueError(f"template {t.template_id} needs star_rating")
    source = t.source.format(user_id=user_id, item=f"{item_id} {IMAGE_MARKER}", star_rating=star_rating)
    return Prompt("explanation", t.template_id, source, (str(item_id),), explanation or "")


def template_corpus() -> list[str]:
    """Every template rendered with sample values: the fixed text a built tokenizer must cover."""
    sample = dict(user_id="12", item=f"345 {IMAGE_MARKER}", star_rating=5,
                  history=_item_list(["67", "89"], ","), candidates=_item_list(["10", "11"], ","))
    texts = [t.source.format(**sample) for t in TEMPLATES.values()]
    return texts + ["yes", "no", "->", "user_", "item_"]
