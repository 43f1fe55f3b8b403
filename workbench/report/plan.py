"""Units of work and the fingerprint of a report's parameters.

A unit is what one worker call computes and one checkpoint file holds:

- ``shard``: one prompt shard of an analyzer whose scores are per-prompt means
  (``Analyzer.shard_rule == "mean"``), run without its causal step;
- ``single``: an analyzer that does not shard (dataset-level searches, attribution, the
  safety analyzer...), run whole with its own causal step;
- ``causal``: the causal step of a sharded analyzer, run on the merged ranking;
- ``frames``: an analyzer built on other analyzers' tables (the atlas);
- ``examples``: attention maps of each analyzer's top heads on one prompt.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from workbench.errors import WorkbenchError

PLAN_VERSION = 2
"""Bumped when units compute something else for the same parameters (2: analyzer tables carry
per-item values and intervals, causal checks their significance), so older checkpoints are
never mixed into a new report."""


class ReportError(WorkbenchError):
    """A report request that cannot run (bad option, folder in use with other parameters...)."""


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads a model: ``load_model(name, dtype=dtype, device=device)``."""

    name: str | None
    dtype: str = "float32"
    device: str = "cpu"

    @property
    def key(self) -> str:
        """A short file-system-safe id (also the ``model`` column's value)."""
        base = self.name or "smollm2-135m-instruct"
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", base.rstrip("/").split("/")[-1]) or "model"
        if self.dtype != "float32":
            slug += f"-{self.dtype}"
        return slug


@dataclass
class ReportConfig:
    """Everything that decides a report's content (and what only decides how it runs)."""

    models: list[ModelSpec]
    analyzers: list[str]
    out: str
    prompts: list[dict[str, Any]] | None = None
    prompts_source: str | None = None
    shard_size: int = 4
    top_k: int = 5
    draws: int | None = None
    """Random control sets of every causal check; None: each analyzer's own default (39 for
    checks that run forwards, 20 for checks that generate text; 3 under ``quick``)."""
    seed: int = 0
    causal: bool = True
    n_prompts: int | None = None
    examples: int = 2
    quick: bool = False
    """Every analyzer's ``quick`` mode: the small tasks (and few draws) for interactive use;
    its evidence is weak, and the report says so."""
    # how it runs (not part of the fingerprint)
    executor: str = "serial"
    address: str | None = None
    workers: int = 2
    num_gpus: float = 0.0
    force: bool = False
    quiet: bool = False
    figures: tuple[str, ...] = ("png",)
    """Formats of the print-size figure files (``figures/<name>.<fmt>``): png, svg, pdf."""
    batch_size: int | str = "auto"
    """Prompts per forward of the analyzers that batch (batched results equal unbatched ones,
    so it is not part of the fingerprint)."""

    def analyzer_params(self) -> dict[str, Any]:
        """Parameters every analyzer receives (each takes those its ``run`` has:
        :meth:`~workbench.analyzers.Analyzer.select`); ``draws`` and ``n_prompts`` only when
        set, so that the analyzers' own defaults apply otherwise."""
        params: dict[str, Any] = {
            "top_k": self.top_k,
            "seed": self.seed,
            "quick": self.quick,
            "batch_size": self.batch_size,
        }
        if self.draws is not None:
            params["draws"] = self.draws
        if self.n_prompts is not None:
            params["n_prompts"] = self.n_prompts
        return params


@dataclass(frozen=True)
class Unit:
    """One checkpointed piece of work."""

    model: str
    analyzer: str
    kind: str  # shard | single | causal | frames | examples
    index: int = 0
    n_prompts: int = 0

    @property
    def uid(self) -> str:
        """Stable id, also the checkpoint's relative path."""
        return f"{self.model}/{self.analyzer}/{self.kind}-{self.index:04d}"


@dataclass
class AnalyzerPlan:
    """How one analyzer runs on one model."""

    model: str
    analyzer: str
    items: list[dict[str, Any]] | None  # None: the analyzer's own default task
    prompts: str  # "user", "default" or "default (prompts lack fields ...)"
    shards: list[Unit] = field(default_factory=list)
    causal: Unit | None = None

    @property
    def sharded(self) -> bool:
        return bool(self.shards) and self.shards[0].kind == "shard"


def split(items: list[Any], size: int) -> list[list[Any]]:
    """Contiguous chunks of ``size`` items (the last one shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def items_digest(items: list[dict[str, Any]] | None) -> str:
    """sha256 of the prompt items (``default`` for an analyzer's own task)."""
    if items is None:
        return "default"
    blob = json.dumps(items, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def fingerprint(config: ReportConfig, plans: list[AnalyzerPlan]) -> tuple[str, dict[str, Any]]:
    """sha256 of everything that decides the report's tables, with the readable parameters.

    Executor, workers, ``--quiet`` and PNG output are left out: they change how a report
    runs, not what it contains, so a serial run may be resumed on Ray and back.
    """
    params = {
        "plan_version": PLAN_VERSION,
        "models": [asdict(m) for m in config.models],
        "analyzers": list(config.analyzers),
        "prompts": config.prompts_source or "default tasks",
        "prompt_items": {f"{p.model}/{p.analyzer}": items_digest(p.items) for p in plans},
        "shard_size": config.shard_size,
        "top_k": config.top_k,
        "draws": config.draws,
        "seed": config.seed,
        "causal": config.causal,
        "n_prompts": config.n_prompts,
        "examples": config.examples,
        "quick": config.quick,
    }
    blob = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest(), params
