"""What a worker does with one unit: a picklable :class:`Task` and :func:`execute`.

Workers (serial or Ray) only compute; the driver writes the checkpoints. Every unit goes
through :func:`workbench.analyzers.analyze`: the report never reimplements an analyzer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from workbench.report.plan import ModelSpec, Unit

if TYPE_CHECKING:
    from workbench.lm import LoadedModel

ProgressFn = Callable[[int, int], None]
EXAMPLE_TOKENS = 48  # example attention maps: first tokens of the example prompt


@dataclass
class Task:
    """A unit with everything needed to compute it (picklable)."""

    unit: Unit
    model: ModelSpec
    items: list[dict[str, Any]] | None
    params: dict[str, Any]
    ranking: list[tuple[int, int]] | None = None
    frames: dict[str, pd.DataFrame] | None = None
    heads: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    @property
    def table(self) -> bool:
        """Whether the result is a table (else a JSON-able object)."""
        return self.unit.kind in ("shard", "single", "frames")


def execute(task: Task, lm: LoadedModel, progress: ProgressFn | None = None) -> Any:
    """Compute ``task`` on the loaded model ``lm``: a DataFrame for table units, the causal
    dict for causal units, a list of example maps for example units."""
    from workbench.analyzers import analyze, get_analyzer

    kind, name = task.unit.kind, task.unit.analyzer
    if kind == "examples":
        return example_maps(lm, task.items[0]["prompt"] if task.items else "", task.heads)
    # The report gives every analyzer the same options (top_k, draws, seed, n_prompts...);
    # each gets the ones its run takes (an analyzer refuses parameters it does not take).
    params = get_analyzer(name).select(task.params)

    def callback(desc: str, done: int, total: int) -> None:
        if progress is not None:
            progress(done, total)

    if kind == "shard":
        return analyze(name, lm, task.items, progress=callback, **params, causal=False)
    if kind == "single":
        return analyze(name, lm, task.items, progress=callback, **params)
    if kind == "frames":
        return analyze(name, lm, task.items, progress=callback, frames=task.frames or {}, **params)
    if kind == "causal":
        df = analyze(
            name,
            lm,
            task.items,
            progress=callback,
            **params,
            causal=True,
            ranking=task.ranking,
        )
        return df.attrs.get("causal")
    raise ValueError(f"unknown unit kind {kind!r}")


def example_maps(
    lm: LoadedModel, prompt: str, heads: dict[str, list[tuple[int, int]]]
) -> list[dict[str, Any]]:
    """Attention maps of ``heads`` (by analyzer) on the first :data:`EXAMPLE_TOKENS` tokens of
    ``prompt``, one capture per layer: each a dict with the head and its (L, L) ``map``."""
    if not prompt.strip():
        prompt = "The cat sat on the mat. The cat sat on the mat."
    enc = lm.encode(prompt)
    if enc.n_tokens > EXAMPLE_TOKENS:
        enc = lm.encode(lm.tokenizer.decode(enc.input_ids[0][:EXAMPLE_TOKENS]))
    wanted = sorted({tuple(h) for hs in heads.values() for h in hs})
    maps: dict[tuple[int, int], list[list[float]]] = {}
    for layer in sorted({h[0] for h in wanted}):
        layer_heads = [h for l_, h in wanted if l_ == layer]
        _, rec = lm.run_capture(enc, layers=[layer], heads=layer_heads)
        for h in layer_heads:
            maps[(layer, h)] = rec.map(layer, h).double().numpy().round(5).tolist()
    out = []
    for analyzer, hs in heads.items():
        for layer, head in hs:
            out.append(
                {
                    "analyzer": analyzer,
                    "layer": int(layer),
                    "head": int(head),
                    "head_id": lm.head_id(int(layer), int(head)),
                    "tokens": list(enc.tokens),
                    "map": maps[(int(layer), int(head))],
                }
            )
    return out
