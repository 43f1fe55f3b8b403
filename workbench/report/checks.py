"""The checks of a report request, all run before any model loads or any file is written:
options (types and ranges, through :mod:`probes.checks`), the analyzers' own parameter checks
(:meth:`workbench.analyzers.Analyzer.check_params`, the one the Python API runs) and the
output folder."""

from __future__ import annotations

from pathlib import Path

from probes.checks import ArgumentError, boolean, choice, integer, number, optional
from workbench.analyzers import ANALYZERS, get_analyzer
from workbench.batching import check_batch_size
from workbench.figure_export import figure_formats
from workbench.report.plan import ModelSpec, ReportConfig, ReportError

#: Where reports run (:func:`workbench.report.executors.make_executor`).
EXECUTORS = ("serial", "ray")


def _options(config: ReportConfig) -> None:
    """Every scalar option of ``config``: integers in range, finite numbers, booleans."""
    for name, value, low in (
        ("--shard-size", config.shard_size, 1),
        ("--top-k", config.top_k, 1),
        ("--seed", config.seed, 0),
        ("--examples", config.examples, 0),
        ("--workers", config.workers, 1),
    ):
        integer(name, value, minimum=low, error=ReportError)
    optional(integer, "--n-prompts", config.n_prompts, minimum=1, error=ReportError)
    optional(integer, "--draws", config.draws, minimum=1, error=ReportError)
    number("--num-gpus", config.num_gpus, minimum=0)
    choice("--executor", config.executor, EXECUTORS)
    for name in ("causal", "quick", "force", "quiet"):
        boolean(name, getattr(config, name))
    figure_formats(config.figures)
    try:
        check_batch_size(config.batch_size)
    except ArgumentError as exc:
        raise ReportError(f"--batch-size: {exc}") from None


def _models(config: ReportConfig) -> None:
    """Each model's name, dtype and device as :func:`workbench.load_model` checks them, before
    any weights are read. On Ray the workers load the models, maybe on other machines: only the
    dtype and the device's syntax are checked here."""
    from workbench.models import check_load_arguments, parse_dtype, resolve_source

    for spec in config.models:
        if config.executor == "ray":
            parse_dtype(spec.dtype)
            continue
        check_load_arguments(spec.name, spec.dtype, spec.device, None)
        if spec.name is not None:
            resolve_source(spec.name)


def check_config(config: ReportConfig) -> None:
    """User errors caught before any model loads.

    Raises:
        ReportError: naming the option, the bad value and what is allowed.
    """
    if not isinstance(config.models, list) or not config.models:
        raise ReportError("no model given")
    if not all(isinstance(m, ModelSpec) for m in config.models):
        raise ReportError("models must be ModelSpec values, one per --model")
    if not isinstance(config.analyzers, list) or not config.analyzers:
        raise ReportError("no analyzer given")
    unknown = [a for a in config.analyzers if a not in ANALYZERS]
    if unknown:
        raise ReportError(
            f"unknown analyzer(s) {', '.join(map(repr, unknown))}; known: "
            f"{', '.join(sorted(ANALYZERS))}"
        )
    if len(set(config.analyzers)) != len(config.analyzers):
        raise ReportError("--analyzers lists an analyzer twice")
    keys = [m.key for m in config.models]
    if len(set(keys)) != len(keys):
        raise ReportError(f"two --model values map to the same id: {keys}")
    try:
        _options(config)
        _models(config)
        if config.executor != "ray" and (config.address or config.num_gpus):
            raise ReportError("--address/--num-gpus need --executor ray")
        for name in config.analyzers:  # each analyzer's own check of the shared parameters
            an = get_analyzer(name)
            an.check_params(None, an.select(config.analyzer_params()))
    except ArgumentError as exc:
        raise ReportError(str(exc)) from None
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file; give a folder (new or a report's)")
