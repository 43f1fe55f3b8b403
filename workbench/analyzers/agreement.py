"""Where head families meet: top-k overlap and rank correlation of analyzers' head tables.

:func:`agreement` takes analyzer tables of one model (``{family: DataFrame}``, one row per head,
``layer, head, score``) and answers "is my retrieval head also an induction head?" for every
pair of families at once:

* **top-k overlap**: how many heads the two families' top-k sets share, and their Jaccard index
  ``|A & B| / |A | B|`` (Jaccard 1901);
* **Spearman correlation** of the two score vectors over all heads that both score (NaN scores
  are left out; average ranks for ties; :func:`workbench.analyzers.uncertainty.spearman`), with
  a permutation p-value (one family's scores shuffled over the heads, ``permutations`` times;
  the share of shuffles with ``|rho|`` at least the observed one, with the +1 correction of
  Davison & Hinkley 1997, eq. 4.11, so it is never 0). The permutation null treats heads as
  exchangeable; heads of one layer are not independent samples, so read the p-value as a guide
  to how surprising the correlation is, not as a test over a population of heads.
* **multi-label heads**: the heads in the top-k set of two or more families.

The top-k rule (one rule for the overlap and the labels): a family's top-k set is its ``k``
highest-scoring heads (NaN scores never count); when the k-th and the (k+1)-th score tie, the
heads of that tied value are all left out, so the set holds fewer than ``k`` heads rather than an
arbitrary pick among equals (a family whose scores are mostly 0, e.g. retrieval on a small task,
then labels only the heads it actually scores). Without such a tie the set equals the heads
:func:`workbench.analyzers.base.top_heads` (the causal check's top-k) picks. The analyzers' own
threshold columns (``is_sink_head``, ``is_retrieval_head``) are not used: only some families
have one, and the sink threshold labels most heads of most models, so a label from it would say
little; the sizes of the sets are in the table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from probes.checks import describe, integer
from workbench.analyzers.base import AnalyzerArgumentError, checked
from workbench.analyzers.params import frames_check
from workbench.analyzers.uncertainty import spearman
from workbench.heads import head_id

#: Analyzers whose ``score`` is not a head family's score, left out of the report's table:
#: the atlas score is a head's distance to its k-means cluster centre.
NOT_FAMILIES = frozenset({"atlas"})
DEFAULT_K = 10
PERMUTATIONS = 10_000
PAIR_COLUMNS = (
    "family_a",
    "family_b",
    "top_a",
    "top_b",
    "overlap",
    "jaccard",
    "shared",
    "spearman",
    "p_value",
    "n_heads",
)


@dataclass(frozen=True)
class Agreement:
    """The result of :func:`agreement`.

    Attributes:
        pairs: one row per pair of families (in the order given): ``family_a, family_b``,
            ``top_a``/``top_b`` (sizes of the top-k sets), ``overlap`` (heads in both),
            ``jaccard``, ``shared`` (those heads' ids, comma-joined, in layer/head order),
            ``spearman`` (NaN when a family's scores are constant), ``p_value`` (permutation),
            ``n_heads`` (heads both families score, the Spearman's sample).
        labels: the heads in two or more top-k sets: ``head_id, layer, head, n_labels,
            families`` (comma-joined), most labels first.
        top: each family's top-k head ids, best first.
        tied_out: per family, the heads left out of its top-k set by a tie at the boundary.
        k, model, permutations, seed: the parameters (``model`` from the frames' attrs, or
            None).
    """

    pairs: pd.DataFrame
    labels: pd.DataFrame
    top: dict[str, list[str]]
    tied_out: dict[str, int]
    k: int
    model: str | None = None
    permutations: int = PERMUTATIONS
    seed: int = 0
    families: tuple[str, ...] = field(default=())

    def matrix(self, column: str = "spearman") -> pd.DataFrame:
        """A symmetric ``families x families`` table of a pair column (``spearman``,
        ``jaccard``, ``overlap``, ``p_value``); the diagonal is 1 for ``spearman`` and
        ``jaccard``, the set's size for ``overlap``, NaN for the rest."""
        if column not in self.pairs.columns or column in ("family_a", "family_b", "shared"):
            allowed = ", ".join(c for c in PAIR_COLUMNS[2:] if c != "shared")
            raise AnalyzerArgumentError(f"column must be one of {allowed}, got {column!r}")
        names = list(self.families)
        out = pd.DataFrame(np.nan, index=names, columns=names, dtype=np.float64)
        for row in self.pairs.itertuples(index=False):
            value = float(getattr(row, column))
            out.loc[row.family_a, row.family_b] = out.loc[row.family_b, row.family_a] = value
        for name in names:
            diagonal = {"spearman": 1.0, "jaccard": 1.0, "overlap": len(self.top[name])}
            out.loc[name, name] = diagonal.get(column, np.nan)
        return out

    def to_markdown(self) -> str:
        """The pair table and the multi-label heads as Markdown (for a README or notebook)."""
        lines = [
            f"| families | top-{self.k} overlap | Jaccard | shared heads | Spearman | "
            "p (permutation) | heads |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.pairs.itertuples(index=False):
            lines.append(
                f"| {r.family_a} / {r.family_b} | {r.overlap} of {r.top_a}/{r.top_b} | "
                f"{r.jaccard:.2f} | {r.shared or '-'} | {_fmt(r.spearman, '.2f')} | "
                f"{_fmt(r.p_value, '.2g')} | {r.n_heads} |"
            )
        if len(self.labels):
            lines += ["", "| head | labels | families |", "|---|---|---|"]
            for r in self.labels.itertuples(index=False):
                lines.append(f"| {r.head_id} | {r.n_labels} | {r.families} |")
        return "\n".join(lines)


def _fmt(value: float, spec: str) -> str:
    return "n/a" if not np.isfinite(value) else format(value, spec)


def agreement(
    frames: Mapping[str, pd.DataFrame],
    *,
    k: int = DEFAULT_K,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> Agreement:
    """Pairwise agreement of head families: top-k overlap, Spearman correlation over heads,
    and the heads with several labels (rules in the module docstring).

    Args:
        frames: ``{family: table}`` with two or more families, each an analyzer table of the
            same model with one row per head (``layer``, ``head``, numeric ``score``; NaN =
            no score) and the same heads in each.
        k: size of each top-k set, ``1..n_heads`` (n_heads = rows of a table).
        permutations: shuffles of the permutation p-value (>= 1; 10,000 by default).
        seed: seed of the shuffles.

    Returns:
        :class:`Agreement`.

    Raises:
        AnalyzerArgumentError: an empty or one-family ``frames``, a value that is not a
            DataFrame, a missing or non-numeric ``score`` column, an infinite score, duplicate
            heads, tables of different head sets or of different models (``attrs["model"]``),
            ``k`` out of range.
    """
    frames = checked(frames_check, "frames", frames, lm=None)
    if frames is None or len(frames) < 2:
        got = "nothing" if not frames else f"only {list(frames)}"
        raise AnalyzerArgumentError(
            f"frames needs two or more families {{name: DataFrame}} to compare, got {got}"
        )
    keys, model = _common_heads(frames)
    n = len(keys)
    k = checked(integer, "k", k, minimum=1, maximum=n)
    permutations = checked(integer, "permutations", permutations, minimum=1)
    seed = checked(integer, "seed", seed, minimum=0)
    scores = {name: _scores(name, df, keys) for name, df in frames.items()}
    ids = [head_id(a, b) for a, b in keys]
    tops, tied = {}, {}
    for name, s in scores.items():
        tops[name], tied[name] = _top_set(s, k)
    rng = np.random.default_rng(seed)
    rows = []
    for a, b in combinations(frames, 2):
        shared = sorted(tops[a] & tops[b])
        union = tops[a] | tops[b]
        rho, p, n_both = _correlation(scores[a], scores[b], permutations, rng)
        rows.append(
            {
                "family_a": a,
                "family_b": b,
                "top_a": len(tops[a]),
                "top_b": len(tops[b]),
                "overlap": len(shared),
                "jaccard": len(shared) / len(union) if union else float("nan"),
                "shared": ",".join(ids[i] for i in shared),
                "spearman": rho,
                "p_value": p,
                "n_heads": n_both,
            }
        )
    return Agreement(
        pairs=pd.DataFrame(rows, columns=list(PAIR_COLUMNS)),
        labels=_labels(tops, keys, ids),
        top={name: [ids[i] for i in _ranked(scores[name], tops[name])] for name in frames},
        tied_out=tied,
        k=k,
        model=model,
        permutations=permutations,
        seed=seed,
        families=tuple(frames),
    )


def _common_heads(frames: Mapping[str, pd.DataFrame]) -> tuple[list[tuple[int, int]], str | None]:
    """The (layer, head) pairs every table covers (sorted), and their common model name."""
    keys: list[tuple[int, int]] | None = None
    model, model_of = None, None
    for name, df in frames.items():
        missing = [c for c in ("layer", "head", "score") if c not in df.columns]
        if missing:
            raise AnalyzerArgumentError(
                f"frames[{name!r}] lacks column(s) {missing}; an analyzer table has one row "
                "per head with layer, head and score"
            )
        if df.empty:
            raise AnalyzerArgumentError(f"frames[{name!r}] has no rows; give one row per head")
        pairs = [
            (
                checked(integer, f"frames[{name!r}].layer", a, minimum=0),
                checked(integer, f"frames[{name!r}].head", b, minimum=0),
            )
            for a, b in zip(df["layer"].tolist(), df["head"].tolist(), strict=True)
        ]
        if len(set(pairs)) != len(pairs):
            raise AnalyzerArgumentError(
                f"frames[{name!r}] lists a head twice; give one row per (layer, head)"
            )
        these = sorted(pairs)
        if keys is None:
            keys, first = these, name
        elif these != keys:
            extra = sorted(set(these) - set(keys))[:3]
            lack = sorted(set(keys) - set(these))[:3]
            raise AnalyzerArgumentError(
                f"frames[{name!r}] covers other heads than frames[{first!r}] ({len(these)} vs "
                f"{len(keys)} rows; extra {[head_id(*h) for h in extra]}, missing "
                f"{[head_id(*h) for h in lack]}); give tables of one model, all heads"
            )
        this_model = df.attrs.get("model")
        if this_model is not None:
            if model is not None and this_model != model:
                raise AnalyzerArgumentError(
                    f"frames[{name!r}] is of model {this_model!r} but frames[{model_of!r}] of "
                    f"{model!r}; compare the families of one model"
                )
            model, model_of = this_model, name
    assert keys is not None
    return keys, model


def _scores(name: str, df: pd.DataFrame, keys: list[tuple[int, int]]) -> np.ndarray:
    """``df.score`` in the order of ``keys`` (float; NaN kept, infinities refused)."""
    if not pd.api.types.is_numeric_dtype(df["score"]) or pd.api.types.is_bool_dtype(df["score"]):
        raise AnalyzerArgumentError(
            f"frames[{name!r}].score must be numbers, got dtype {df['score'].dtype} "
            f"(first value {describe(df['score'].iloc[0])})"
        )
    index = pd.MultiIndex.from_arrays([df["layer"].astype(int), df["head"].astype(int)])
    values = pd.Series(df["score"].to_numpy(np.float64), index=index)
    out = values.reindex(pd.MultiIndex.from_tuples(keys)).to_numpy(np.float64)
    if np.isinf(out).any():
        bad = keys[int(np.flatnonzero(np.isinf(out))[0])]
        raise AnalyzerArgumentError(
            f"frames[{name!r}].score is infinite at {head_id(*bad)}; scores must be finite "
            "(NaN = no score)"
        )
    return out


def _top_set(score: np.ndarray, k: int) -> tuple[set[int], int]:
    """Indices of the top-k set (ties at the boundary left out) and how many were left out."""
    finite = np.flatnonzero(np.isfinite(score))
    order = finite[np.argsort(-score[finite], kind="stable")]
    if len(order) <= k:
        return set(order.tolist()), 0
    kth, nxt = score[order[k - 1]], score[order[k]]
    if kth > nxt:
        return set(order[:k].tolist()), 0
    keep = order[score[order] > kth]
    return set(keep.tolist()), k - len(keep)


def _ranked(score: np.ndarray, members: set[int]) -> list[int]:
    """``members`` best first (ties in head order)."""
    return sorted(members, key=lambda i: (-score[i], i))


def _correlation(
    a: np.ndarray, b: np.ndarray, permutations: int, rng: np.random.Generator
) -> tuple[float, float, int]:
    """Spearman rho over the heads both score, its permutation p-value, and that head count.

    Shuffling b's scores shuffles its ranks, so each shuffle's rho is the Pearson correlation
    of a's ranks with permuted b ranks (no re-ranking)."""
    both = np.isfinite(a) & np.isfinite(b)
    n = int(both.sum())
    rho = spearman(a[both], b[both])
    if not np.isfinite(rho):
        return float("nan"), float("nan"), n
    ra = pd.Series(a[both]).rank().to_numpy()
    rb = pd.Series(b[both]).rank().to_numpy()
    ra = (ra - ra.mean()) / np.linalg.norm(ra - ra.mean())
    rb = (rb - rb.mean()) / np.linalg.norm(rb - rb.mean())
    hits = 0
    for start in range(0, permutations, 1000):  # chunks: memory stays ~ 1000 x n
        size = min(1000, permutations - start)
        perm = rng.permuted(np.broadcast_to(rb, (size, n)), axis=1)
        hits += int(np.sum(np.abs(perm @ ra) >= abs(rho) - 1e-12))
    return float(rho), (hits + 1) / (permutations + 1), n


def _labels(tops: Mapping[str, set[int]], keys: list[tuple[int, int]], ids: list[str]):
    """The heads in two or more top-k sets, most labels first, then layer and head."""
    rows: list[dict[str, Any]] = []
    for i, (layer, head) in enumerate(keys):
        families = [name for name, members in tops.items() if i in members]
        if len(families) >= 2:
            rows.append(
                {
                    "head_id": ids[i],
                    "layer": layer,
                    "head": head,
                    "n_labels": len(families),
                    "families": ",".join(families),
                }
            )
    out = pd.DataFrame(rows, columns=["head_id", "layer", "head", "n_labels", "families"])
    out = out.sort_values(["n_labels", "layer", "head"], ascending=[False, True, True])
    return out.reset_index(drop=True)
