"""Terminal progress: one bar per (model, analyzer) counting its units, one for the running
shard's prompts (serial executor; Ray reports whole shards as they come back)."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from workbench.report.tasks import Task


class ProgressBoard:
    """tqdm bars keyed by ``model/analyzer``; silent when ``enabled`` is False."""

    def __init__(self, totals: dict[str, int], enabled: bool = True) -> None:
        self.enabled = enabled
        self.bars: dict[str, Any] = {}
        self.shard_bar: Any = None
        self._shard_key: str | None = None
        if not enabled:
            return
        width = max((len(k) for k in totals), default=10)
        for pos, (key, total) in enumerate(totals.items()):
            self.bars[key] = tqdm(
                total=total, desc=f"{key:<{width}}", unit="unit", position=pos, leave=True
            )
        self._pos = len(totals)

    @staticmethod
    def key(task: Task) -> str:
        return f"{task.unit.model}/{task.unit.analyzer}"

    def skip(self, key: str, n: int) -> None:
        """Units already finished on disk (a resumed run)."""
        if key in self.bars and n:
            self.bars[key].update(n)

    def task_progress(self, task: Task, done: int, total: int) -> None:
        """Prompt-level progress of the running unit."""
        if not self.enabled:
            return
        if self._shard_key != task.unit.uid:
            if self.shard_bar is not None:
                self.shard_bar.close()
            self.shard_bar = tqdm(
                total=total,
                desc=f"  {task.unit.uid}",
                unit="prompt",
                position=self._pos,
                leave=False,
            )
            self._shard_key = task.unit.uid
        self.shard_bar.total = total
        self.shard_bar.n = done
        self.shard_bar.refresh()

    def unit_done(self, task: Task) -> None:
        """A unit finished."""
        bar = self.bars.get(self.key(task))
        if bar is not None:
            bar.update(1)

    def close(self) -> None:
        if self.shard_bar is not None:
            self.shard_bar.close()
        for bar in self.bars.values():
            bar.close()
