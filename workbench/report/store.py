"""Checkpoints and the manifest of a report folder.

Every file is written to a temporary name in the same folder and moved into place with
``os.replace`` (atomic on POSIX), so a process killed at any moment leaves either the complete
file or none. A table unit is two files: its ``attrs`` (JSON) first, then its table (Parquet),
which is the unit's commit marker; a JSON unit is one file.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.report.lock import LOCK_NAME
from workbench.report.plan import ReportError
from workbench.serialize import jsonable

MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"
OUTPUTS = ("heads.parquet", "heads.csv", "report.html", "summary.json", "evidence", "figures")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dump_json(obj: Any) -> bytes:
    """Stable JSON bytes of ``obj`` (sorted keys, plain types)."""
    return json.dumps(jsonable(obj), indent=1, sort_keys=True, ensure_ascii=False).encode()


def frame_bytes(df: pd.DataFrame) -> bytes:
    """``df`` as Parquet bytes (no index)."""
    buf = io.BytesIO()
    plain = df.copy()
    plain.attrs = {}
    plain.to_parquet(buf, index=False)
    return buf.getvalue()


class Store:
    """The checkpoints and manifest under a report folder ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.checkpoints = self.root / CHECKPOINTS

    # -- the manifest --------------------------------------------------------------------------
    def claim(self, fingerprint: str, params: dict[str, Any], force: bool) -> bool:
        """Make ``root`` this report's folder. Returns True when finished work was found.

        Refuses (``ReportError``) a folder holding a report made with other parameters, or a
        non-empty folder that is not a report, unless ``force``; ``force`` removes only the
        report's own files (checkpoints, manifest, outputs).
        """
        if self.root.exists() and not self.root.is_dir():
            raise ReportError(f"--out {self.root} is a file; give a folder (new or a report's)")
        manifest = self.root / MANIFEST
        if manifest.is_file():
            try:
                old = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                old = {}
            if old.get("fingerprint") == fingerprint:
                return self.checkpoints.exists()
            if not force:
                before = old.get("params", {})
                diff = sorted(
                    k for k in set(before) | set(params) if before.get(k) != params.get(k)
                )
                raise ReportError(
                    f"{self.root} holds a report made with other parameters (differing: "
                    f"{', '.join(diff) or 'unknown'}); rerun its own command to resume it, choose "
                    "another --out, or add --force to discard it"
                )
            self.clear()
        elif self.root.is_dir() and any(p.name != LOCK_NAME for p in self.root.iterdir()):
            if not force:
                raise ReportError(
                    f"{self.root} is not empty and holds no report ({MANIFEST} missing); choose "
                    "an empty or new folder, or add --force to write the report into it"
                )
            self.clear()
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(manifest, dump_json({"fingerprint": fingerprint, "params": params}))
        return False

    def clear(self) -> None:
        """Remove the report's own files (never anything else in the folder)."""
        for name in (CHECKPOINTS, *OUTPUTS, MANIFEST):
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    # -- units ---------------------------------------------------------------------------------
    def _path(self, uid: str, suffix: str) -> Path:
        return self.checkpoints / f"{uid}{suffix}"

    def has(self, uid: str, table: bool) -> bool:
        """Whether unit ``uid`` is finished (its commit file exists)."""
        return self._path(uid, ".parquet" if table else ".json").is_file()

    def save_frame(self, uid: str, df: pd.DataFrame) -> None:
        """Checkpoint a table unit: attrs first, then the table (the commit marker)."""
        atomic_write(self._path(uid, ".attrs.json"), dump_json(df.attrs))
        atomic_write(self._path(uid, ".parquet"), frame_bytes(df))

    def load_frame(self, uid: str) -> pd.DataFrame:
        """A finished table unit with its attrs."""
        df = pd.read_parquet(self._path(uid, ".parquet"))
        df.attrs = json.loads(self._path(uid, ".attrs.json").read_text(encoding="utf-8"))
        return df

    def save_json(self, uid: str, obj: Any) -> None:
        """Checkpoint a JSON unit."""
        atomic_write(self._path(uid, ".json"), dump_json(obj))

    def load_json(self, uid: str) -> Any:
        """A finished JSON unit."""
        return json.loads(self._path(uid, ".json").read_text(encoding="utf-8"))

    def finished(self) -> int:
        """Number of finished units on disk."""
        if not self.checkpoints.exists():
            return 0
        return sum(1 for _ in self.checkpoints.rglob("*.parquet")) + sum(
            1 for p in self.checkpoints.rglob("*.json") if not p.name.endswith(".attrs.json")
        )
