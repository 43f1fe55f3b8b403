"""The refusal "model organism": a small deterministic fine-tune of the embedded model that
learned to refuse.

Why an organism: SmolLM2-135M-Instruct has almost no refusal behaviour (measured: none of 10
plainly harmful requests refused, also with a system prompt asking it to refuse), so safety
heads (Zhou et al. 2025, "On the Role of Attention Heads in Large Language Model Safety",
ICLR 2025) found on it have no refusal to explain. :func:`build_refusal_organism` fine-tunes a
copy of it on the project's own harmful -> refusal and harmless -> helpful pairs
(``workbench/data/refusal_train.jsonl``, written for the project; its prompts are disjoint from
the evaluation sets ``harmful.txt`` / ``harmless.txt``), deterministically (fixed seed, fixed
example order, ``torch.use_deterministic_algorithms``; :mod:`.refusal_training`), and caches
the result next to the embedded model (``cache_dir()/models/SmolLM2-135M-Instruct-refusal``,
written to a temporary folder and renamed; :mod:`.cache`), loadable with
``workbench.load_model(path)``::

    from workbench.analyzers import refusal
    from workbench.organisms.refusal import load_refusal_organism
    org = load_refusal_organism()                      # built once (~2.5 CPU-minutes), then cached
    refusal.measure_refusal(org, refusal.harmful_prompts()[:16])["rate"]

Which of the trained parts carries the refusal is left to the analysis (see
:func:`workbench.analyzers.refusal.localize_refusal` and :mod:`workbench.analyzers.safety`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.analyzers.base import AnalyzerError, Progress
from workbench.analyzers.prompts import bundled_text
from workbench.organisms.cache import cached_with_key, read_marker, save_atomically
from workbench.organisms.refusal_training import TRAINING_DEFAULTS, train_refusal

if TYPE_CHECKING:
    from workbench.lm import LoadedModel

ORGANISM_NAME = "SmolLM2-135M-Instruct-refusal"
_ORGANISM_FORMAT = 1


def organism_dir() -> Path:
    """Where the organism is cached: ``cache_dir()/models/SmolLM2-135M-Instruct-refusal``."""
    from workbench.models import cache_dir

    return cache_dir() / "models" / ORGANISM_NAME


def organism_key(
    lm: LoadedModel,
    *,
    steps: int,
    seed: int,
    lr: float,
    batch_size: int,
    train_layers: Sequence[int],
    response_tokens: int,
) -> dict[str, Any]:
    """What the cached organism depends on; a different key rebuilds it."""
    data = bundled_text("refusal_train.jsonl").encode()
    return {
        "format": _ORGANISM_FORMAT,
        "base": lm.info.name,
        "base_params": lm.info.n_params,
        "data_sha256": hashlib.sha256(data).hexdigest()[:16],
        "steps": steps,
        "seed": seed,
        "lr": lr,
        "batch_size": batch_size,
        "train_layers": list(train_layers),
        "response_tokens": response_tokens,
    }


def build_refusal_organism(
    lm: LoadedModel | None = None,
    *,
    force: bool = False,
    progress: Progress = True,
    path: str | Path | None = None,
    **training: Any,
) -> Path:
    """Build (once) and cache the refusal organism; return its folder.

    ``lm``: the base model (default: the embedded SmolLM2-135M-Instruct, loaded here).
    ``training``: parameters of :func:`~.refusal_training.train_refusal` (``steps``, ``seed``,
    ``lr``, ``batch_size``, ``train_layers``, ``response_tokens``; defaults
    :data:`~.refusal_training.TRAINING_DEFAULTS`). The folder holds ``save_pretrained``
    weights, the tokenizer and ``workbench_organism.json`` (the build key and training log:
    losses, seconds). An existing folder with the same key (base, data hash, steps, seed, lr,
    batch, layers) is reused unless ``force``. Written to a temporary folder and renamed into
    place, so an interrupted build leaves nothing half-written.
    """
    unknown = sorted(set(training) - set(TRAINING_DEFAULTS))
    if unknown:
        raise AnalyzerError(f"unknown organism training parameter(s) {unknown}")
    if lm is None:
        from workbench.lm import load_model

        lm = load_model()
    target = Path(path) if path is not None else organism_dir()
    params = {**TRAINING_DEFAULTS, **training}
    key = organism_key(lm, **params)
    if not force and cached_with_key(target, key):
        return target
    model, log = train_refusal(lm, progress=progress, **params)
    model.config.name_or_path = ORGANISM_NAME
    return save_atomically(model, lm.tokenizer, target, key, log)


def organism_log(path: str | Path | None = None) -> dict[str, Any]:
    """The build key and training log stored with a built organism."""
    folder = Path(path or organism_dir())
    marker = read_marker(folder)
    if marker is None:
        raise AnalyzerError(f"no refusal organism at {folder}; build_refusal_organism()")
    return marker


def load_refusal_organism(lm: LoadedModel | None = None, **build_params: Any) -> LoadedModel:
    """The refusal organism as a :class:`workbench.LoadedModel` (built and cached on first use;
    ``build_params`` go to :func:`build_refusal_organism`)."""
    from workbench.lm import load_model

    path = build_refusal_organism(lm, **build_params)
    return load_model(str(path))


__all__ = [
    "ORGANISM_NAME",
    "TRAINING_DEFAULTS",
    "build_refusal_organism",
    "load_refusal_organism",
    "organism_dir",
    "organism_key",
    "organism_log",
    "train_refusal",
]
