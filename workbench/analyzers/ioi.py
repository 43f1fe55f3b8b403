"""The attribution analyzer's default task: indirect-object identification (IOI) prompts.

Wang et al. 2022 ("Interpretability in the Wild: a Circuit for Indirect Object Identification
in GPT-2 small") build IOI prompts from templates in which two names are introduced and the
second mention of one of them (the subject) gives something to the other (the indirect object,
the target); the subject is the foil. Their "ABC" corruption replaces the subject's second
mention by a third name, which keeps the token count.

:func:`ioi_task` starts with the six hand-written prompts of :data:`DEFAULT_TASK` (the task
before the default size was chosen by measurement; ``quick=True`` keeps it) and continues with
prompts drawn from :data:`TEMPLATES`, :data:`NAMES`, :data:`PLACES` and :data:`OBJECTS`
(names and nouns that are one token with their leading space in common BPE vocabularies,
SmolLM2's included; a name of several tokens still works, its first token is used).
"""

from __future__ import annotations

import random

#: IOI-style prompts (indirect object = target, repeated subject = foil); ``corrupt`` replaces
#: the second subject mention by a third name (the "ABC" distribution of Wang et al.).
DEFAULT_TASK: tuple[dict[str, str], ...] = (
    {
        "prompt": "When Mary and John went to the store, John gave a drink to",
        "target": " Mary",
        "foil": " John",
        "corrupt": "When Mary and John went to the store, Tom gave a drink to",
    },
    {
        "prompt": "When John and Mary went to the park, Mary gave a ball to",
        "target": " John",
        "foil": " Mary",
        "corrupt": "When John and Mary went to the park, Sarah gave a ball to",
    },
    {
        "prompt": "After Sarah and David had lunch, David handed the bill to",
        "target": " Sarah",
        "foil": " David",
        "corrupt": "After Sarah and David had lunch, James handed the bill to",
    },
    {
        "prompt": "While Anna and Paul were cooking dinner, Paul passed the salt to",
        "target": " Anna",
        "foil": " Paul",
        "corrupt": "While Anna and Paul were cooking dinner, Bob passed the salt to",
    },
    {
        "prompt": "Then, Emma and James went to the office. James gave a pen to",
        "target": " Emma",
        "foil": " James",
        "corrupt": "Then, Emma and James went to the office. Lisa gave a pen to",
    },
    {
        "prompt": "When Bob and Alice arrived at the party, Alice gave a gift to",
        "target": " Bob",
        "foil": " Alice",
        "corrupt": "When Bob and Alice arrived at the party, David gave a gift to",
    },
)

#: Templates after Wang et al.'s: ``{IO}`` / ``{S}`` are introduced (either order, see
#: :func:`ioi_task`), ``{S2}`` is the subject's second mention (the name the corruption swaps).
TEMPLATES: tuple[str, ...] = (
    "Then, {A} and {B} went to the {PLACE}. {S2} gave a {OBJECT} to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {S2} decided to give it to",
    "While {A} and {B} were working at the {PLACE}, {S2} gave a {OBJECT} to",
    "After {A} and {B} went to the {PLACE}, {S2} gave a {OBJECT} to",
    "Friends {A} and {B} found a {OBJECT} at the {PLACE}. {S2} gave it to",
    "When {A} and {B} arrived at the {PLACE}, {S2} handed a {OBJECT} to",
    "Yesterday {A} and {B} met at the {PLACE}, and {S2} passed a {OBJECT} to",
    "As {A} and {B} left the {PLACE}, {S2} offered a {OBJECT} to",
)
NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "Sarah", "David", "James", "Anna", "Paul", "Bob", "Alice", "Emma",
    "Lisa", "Mark", "Kate", "Peter", "Jane", "Daniel", "Laura", "Michael", "Susan", "Robert",
    "Linda", "Chris", "Amy", "Steve", "Ryan", "Jack", "Lucy", "Sam", "Ben", "Eric", "Adam",
    "Helen", "Grace", "Rose", "Henry", "Frank", "George", "Kevin", "Emily", "Rachel",
)  # fmt: skip
PLACES: tuple[str, ...] = (
    "store", "park", "office", "party", "garden", "school", "restaurant", "station", "house",
    "beach", "hospital", "library",
)  # fmt: skip
OBJECTS: tuple[str, ...] = (
    "drink", "ball", "pen", "gift", "book", "letter", "key", "bag", "ring", "card", "cup",
    "hat", "phone", "basket",
)  # fmt: skip


def ioi_prompt(template: str, io: str, subject: str, other: str, place: str, obj: str, *,
               io_first: bool) -> dict[str, str]:  # fmt: skip
    """One IOI item: ``prompt``, ``target`` (`` io``), ``foil`` (`` subject``) and
    ``corrupt`` (the subject's second mention replaced by ``other``)."""
    a, b = (io, subject) if io_first else (subject, io)
    fill = {"A": a, "B": b, "PLACE": place, "OBJECT": obj}
    return {
        "prompt": template.format(**fill, S2=subject),
        "target": f" {io}",
        "foil": f" {subject}",
        "corrupt": template.format(**fill, S2=other),
    }


def ioi_task(n_prompts: int, seed: int = 0) -> list[dict[str, str]]:
    """``n_prompts`` IOI items: the hand-written :data:`DEFAULT_TASK` first, then items drawn
    with ``seed`` (three distinct names, a template, place and object each; the indirect object
    comes first in every other item, so both the ABB and BAB orders occur)."""
    items = [dict(item) for item in DEFAULT_TASK[:n_prompts]]
    rng = random.Random(f"ioi-{seed}")
    seen = {item["prompt"] for item in items}
    while len(items) < n_prompts:
        io, subject, other = rng.sample(NAMES, 3)
        item = ioi_prompt(
            rng.choice(TEMPLATES),
            io,
            subject,
            other,
            rng.choice(PLACES),
            rng.choice(OBJECTS),
            io_first=len(items) % 2 == 0,
        )
        if item["prompt"] not in seen:
            seen.add(item["prompt"])
            items.append(item)
    return items


__all__ = ["DEFAULT_TASK", "NAMES", "OBJECTS", "PLACES", "TEMPLATES", "ioi_prompt", "ioi_task"]
