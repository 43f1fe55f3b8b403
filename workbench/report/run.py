"""The orchestration of ``workbench report``: plan, claim the folder, run the missing units
phase by phase on an executor, checkpoint each as it arrives, then assemble and render.

Phases (each needs the previous one's merged tables):

1. scoring: every ``shard`` and ``single`` unit;
2. causal: per sharded analyzer, its causal step on the merged ranking (``ranking=``),
   evaluated on the analyzer's first ``causal_prompts`` prompts, exactly as an unsharded run;
3. combining: ``frames`` units (the atlas, given the merged tables) and the ``examples`` unit.

Tables are always read back from the checkpoints, so a resumed run and an uninterrupted one
assemble identical inputs into identical outputs.
"""

from __future__ import annotations

import logging
import platform
import time
from collections import defaultdict
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from workbench.analyzers import Analyzer, get_analyzer, top_heads
from workbench.report import assemble, render
from workbench.report.checks import check_config
from workbench.report.executors import Executor, make_executor
from workbench.report.lock import folder_lock
from workbench.report.plan import (
    AnalyzerPlan,
    ModelSpec,
    ReportConfig,
    Unit,
    fingerprint,
    split,
)
from workbench.report.progress import ProgressBoard
from workbench.report.store import Store, atomic_write, dump_json, frame_bytes
from workbench.report.tasks import Task

if TYPE_CHECKING:
    from workbench.lm import LoadedModel

log = logging.getLogger("workbench.report")

VERSION_PACKAGES = (
    "attention-workbench",
    "torch",
    "transformers",
    "pandas",
    "numpy",
    "pyarrow",
    "plotly",
    "scikit-learn",
    "ray",
    "kaleido",
)


def versions() -> dict[str, str]:
    """Versions of Python and the packages a report depends on."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _default_items(
    analyzer: str, spec: ModelSpec, config: ReportConfig, cache: dict[ModelSpec, LoadedModel]
) -> list[Any] | None:
    """The analyzer's fixed default prompts, when it has them (loads the model on the CPU in
    the driver once; ``cache`` keeps it for the serial executor to reuse)."""
    an = get_analyzer(analyzer)
    if type(an).default_items is Analyzer.default_items:  # no fixed default prompt list
        return None
    if spec not in cache:
        from workbench.report.executors import load

        cache[spec] = load(ModelSpec(spec.name, spec.dtype, "cpu"))
    return an.default_items(cache[spec], **config.analyzer_params())


def causal_prompts(an: Analyzer, quick: bool) -> int:
    """How many leading prompts the causal step of a sharded analyzer reads: its
    ``causal_prompts``, or that of its quick mode (``quick_params``)."""
    if quick:
        return int(type(an).quick_params.get("causal_prompts", an.causal_prompts))
    return an.causal_prompts


def build_plans(
    config: ReportConfig, driver_models: dict[ModelSpec, LoadedModel] | None = None
) -> list[AnalyzerPlan]:
    """Every (model, analyzer) with its prompt items and units. Models the driver loads to
    build default prompts are left in ``driver_models`` (fresh dict when None)."""
    plans: list[AnalyzerPlan] = []
    driver_models = {} if driver_models is None else driver_models
    for spec in config.models:
        for name in config.analyzers:
            an = get_analyzer(name)
            items, source = None, "default"
            if config.prompts is not None:
                missing = sorted(
                    {f for f in an.item_fields for it in config.prompts if f not in it}
                )
                if missing:
                    source = f"default (the prompts lack fields {', '.join(missing)})"
                else:
                    items, source = [dict(it) for it in config.prompts], "user"
            plan = AnalyzerPlan(spec.key, name, items, source)
            if an.uses_frames:
                plan.shards = [Unit(spec.key, name, "frames", 0, len(items or []))]
            elif an.shard_rule == "mean":
                if plan.items is None:
                    plan.items = _default_items(name, spec, config, driver_models)
                if plan.items is None:
                    plan.shards = [Unit(spec.key, name, "single")]
                else:
                    chunks = split(plan.items, config.shard_size)
                    plan.shards = [
                        Unit(spec.key, name, "shard", i, len(c)) for i, c in enumerate(chunks)
                    ]
                    if config.causal:
                        plan.causal = Unit(
                            spec.key, name, "causal", 0, causal_prompts(an, config.quick)
                        )
            else:
                plan.shards = [Unit(spec.key, name, "single", 0, len(items or []))]
            plans.append(plan)
    return plans


class Report:
    """One report run (see the module docstring)."""

    def __init__(self, config: ReportConfig) -> None:
        check_config(config)
        self.config = config
        self.root = Path(config.out)
        self.store = Store(self.root)
        self.specs = {m.key: m for m in config.models}
        self.timings: dict[str, float] = {}
        self.computed: list[str] = []
        self.reused: list[str] = []

    # -- units -> tasks ------------------------------------------------------------------------
    def _params(self, causal: bool | None) -> dict[str, Any]:
        params = self.config.analyzer_params()
        if causal is not None:
            params["causal"] = causal
        return params

    def _shard_tasks(self, plan: AnalyzerPlan) -> list[Task]:
        spec = self.specs[plan.model]
        if plan.sharded:
            chunks = split(plan.items or [], self.config.shard_size)
            return [
                Task(unit, spec, chunk, self._params(None))
                for unit, chunk in zip(plan.shards, chunks, strict=True)
            ]
        unit = plan.shards[0]
        if unit.kind == "frames":
            return []  # phase 3
        return [Task(unit, spec, plan.items, self._params(self.config.causal))]

    def _run_phase(self, name: str, tasks: list[Task], executor: Executor, board) -> None:
        start = time.perf_counter()
        todo = []
        for task in tasks:
            if self.store.has(task.unit.uid, task.table):
                self.reused.append(task.unit.uid)
                board.skip(board.key(task), 1)
            else:
                todo.append(task)
        if todo:
            log.info(
                "%s: %d unit(s) to compute, %d already done",
                name,
                len(todo),
                len(tasks) - len(todo),
            )

        def on_done(task: Task, result: Any) -> None:
            if task.table:
                self.store.save_frame(task.unit.uid, result)
            else:
                self.store.save_json(task.unit.uid, result)
            self.computed.append(task.unit.uid)
            board.unit_done(task)

        if todo:
            executor.run(todo, on_done, board.task_progress)
        self.timings[f"phase_{name}_s"] = round(time.perf_counter() - start, 3)

    def _merged(self, plan: AnalyzerPlan) -> pd.DataFrame:
        frames = [self.store.load_frame(u.uid) for u in plan.shards]
        return assemble.merge_shards(plan.analyzer, frames)

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Compute what is missing, write every output; returns the summary. The folder is
        locked for the whole run (:func:`workbench.report.lock.folder_lock`)."""
        with folder_lock(self.root):
            return self._run()

    def _run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        config = self.config
        driver_models: dict[ModelSpec, LoadedModel] = {}
        plans = build_plans(config, driver_models)
        digest, params = fingerprint(config, plans)
        resumed = self.store.claim(digest, params, config.force)
        units_total = sum(len(p.shards) + (p.causal is not None) for p in plans) + len(
            config.models
        ) * (config.examples > 0)
        log.info(
            "report %s: %d model(s), %d analyzer(s), %d unit(s)%s",
            self.root,
            len(config.models),
            len(config.analyzers),
            units_total,
            f", resuming ({self.store.finished()} finished)" if resumed else "",
        )
        totals: dict[str, int] = {}
        for p in plans:
            totals[f"{p.model}/{p.analyzer}"] = len(p.shards) + (p.causal is not None)
        if config.examples > 0:
            for spec in config.models:
                totals[f"{spec.key}/examples"] = 1
        board = ProgressBoard(totals, enabled=not config.quiet)
        executor: Executor | None = None
        try:
            executor = make_executor(
                config.executor,
                address=config.address,
                workers=config.workers,
                num_gpus=config.num_gpus,
            )
            # the serial executor reuses what the driver loaded (no second load)
            executor.adopt({s: m for s, m in driver_models.items() if s in config.models})
            driver_models.clear()
            results = self._compute(plans, executor, board)
        finally:
            board.close()
            if executor is not None:
                executor.close()
        self.timings["compute_s"] = round(time.perf_counter() - t0, 3)
        summary = self._write(plans, results, params, digest, executor)
        return summary

    def _compute(self, plans: list[AnalyzerPlan], executor: Executor, board) -> dict:
        config = self.config
        # 1. scoring
        tasks = [t for p in plans for t in self._shard_tasks(p)]
        self._run_phase("scoring", tasks, executor, board)
        results: dict[str, dict[str, pd.DataFrame]] = defaultdict(dict)
        for p in plans:
            if not get_analyzer(p.analyzer).uses_frames:
                results[p.model][p.analyzer] = self._merged(p)
        # 2. causal steps of sharded analyzers, on the merged ranking
        causal_tasks = []
        for p in plans:
            if p.causal is None:
                continue
            an = get_analyzer(p.analyzer)
            merged = results[p.model][p.analyzer]
            causal_tasks.append(
                Task(
                    p.causal,
                    self.specs[p.model],
                    (p.items or [])[: causal_prompts(an, config.quick)] or None,
                    self._params(None),
                    ranking=top_heads(merged, config.top_k),
                )
            )
        self._run_phase("causal", causal_tasks, executor, board)
        for task in causal_tasks:
            value = self.store.load_json(task.unit.uid)
            if value is not None:
                results[task.unit.model][task.unit.analyzer].attrs["causal"] = value
        # 3. frames units (the atlas) and example maps
        final_tasks = []
        for p in plans:
            if p.shards[0].kind == "frames":
                given = {a: df for a, df in results[p.model].items()}
                final_tasks.append(
                    Task(
                        p.shards[0], self.specs[p.model], p.items, self._params(None), frames=given
                    )
                )
        if config.examples > 0:
            for spec in config.models:
                heads = {
                    a: assemble.top_heads_of(df, config.examples)
                    for a, df in results[spec.key].items()
                }
                prompt = next((p.items for p in plans if p.model == spec.key and p.items), None)
                unit = Unit(spec.key, "examples", "examples")
                final_tasks.append(Task(unit, spec, (prompt or [])[:1] or None, {}, heads=heads))
        self._run_phase("combining", final_tasks, executor, board)
        for p in plans:
            if p.shards[0].kind == "frames":
                results[p.model][p.analyzer] = self._merged(p)
        # keep the requested analyzer order
        ordered = {
            spec.key: {a: results[spec.key][a] for a in config.analyzers if a in results[spec.key]}
            for spec in config.models
        }
        return ordered

    # -- outputs -------------------------------------------------------------------------------
    def _write(self, plans, results, params, digest, executor) -> dict[str, Any]:
        config = self.config
        t0 = time.perf_counter()
        heads = assemble.heads_table(results)
        causal = assemble.causal_table(results)
        atomic_write(self.root / "heads.parquet", frame_bytes(heads))
        atomic_write(self.root / "heads.csv", heads.to_csv(index=False).encode())
        for analyzer in config.analyzers:
            frames = {m: r[analyzer] for m, r in results.items() if analyzer in r}
            table = assemble.evidence_table(frames)
            atomic_write(self.root / "evidence" / f"{analyzer}.parquet", frame_bytes(table))
        atomic_write(self.root / "evidence" / "causal.parquet", frame_bytes(causal))
        examples = []
        if config.examples > 0:
            for spec in config.models:
                for e in self.store.load_json(f"{spec.key}/examples/examples-0000") or []:
                    examples.append({**e, "model": spec.key})
        summary: dict[str, Any] = {
            "fingerprint": digest,
            "params": {
                **params,
                "run": executor.describe() if executor else {},
                "prompts_by_analyzer": {f"{p.model}/{p.analyzer}": p.prompts for p in plans},
            },
            "counts": {
                "models": len(config.models),
                "analyzers": len(config.analyzers),
                "heads_rows": len(heads),
                "units": sum(len(p.shards) + (p.causal is not None) for p in plans)
                + len(config.models) * (config.examples > 0),
                "units_computed_this_run": len(self.computed),
                "units_reused": len(self.reused),
                "shards": {f"{p.model}/{p.analyzer}": len(p.shards) for p in plans},
                "prompts_used": {
                    f"{m}/{a}": df.attrs.get("prompts_used")
                    for m, r in results.items()
                    for a, df in r.items()
                },
            },
            "analyzer_attrs": {m: {a: df.attrs for a, df in r.items()} for m, r in results.items()},
            "versions": versions(),
        }
        figures = render.render_html(self.root / "report.html", results, causal, examples, summary)
        self.timings["html_s"] = round(time.perf_counter() - t0, 3)
        if config.figures:
            t1 = time.perf_counter()
            summary["figures"] = render.write_figures(
                self.root / "figures", figures, config.figures
            )
            self.timings["figures_s"] = round(time.perf_counter() - t1, 3)
            if "skipped" in summary["figures"]:
                log.warning("figure files skipped: %s", summary["figures"]["skipped"])
        else:
            summary["figures"] = {"skipped": "--figures none"}
        summary["timings"] = dict(self.timings)
        atomic_write(self.root / "summary.json", dump_json(summary))
        log.info("wrote %s (report.html, heads.parquet/csv, evidence/, summary.json)", self.root)
        return summary


def run_report(config: ReportConfig) -> dict[str, Any]:
    """Run (or resume) the report ``config`` describes; returns ``summary.json``'s content."""
    return Report(config).run()
