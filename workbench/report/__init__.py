"""Batch head-attribution reports: ``workbench report`` and :func:`run_report`.

Work is split into units (model x analyzer x prompt shard, plus a causal unit per analyzer and
the atlas / example-map units that need merged tables), each checkpointed atomically under the
output folder, so a killed run resumes where it stopped. Units run on an executor (serial or
Ray) and are merged, tabulated and rendered in the driver.

Modules, one job each: :mod:`.plan` (units and the parameter fingerprint), :mod:`.store`
(checkpoints and manifest), :mod:`.tasks` (what a worker does with a unit), :mod:`.executors`
(serial and Ray), :mod:`.progress` (terminal bars), :mod:`.assemble` (merging and tables),
:mod:`.render` (HTML and PNG), :mod:`.text` (one-line accounts of intervals, stability and
causal verdicts, for the page and the command line), :mod:`.run` (the orchestration).
"""

from __future__ import annotations

from workbench.report.plan import ReportConfig, ReportError
from workbench.report.run import run_report

__all__ = ["ReportConfig", "ReportError", "run_report"]
