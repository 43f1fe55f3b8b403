"""Head atlas: one feature vector per head from the other analyzers, clustered and embedded in 2-D.

Each head is described by the scores other analyzers give it (sink first-token score, previous-
token, duplicate-token and induction scores, retrieval, contextual, safety, attribution...) plus
two attention statistics from the kernels: mean entropy (nats) and mean attention distance
(``sum_j A[i, j] (i - j)``) over the queries of a few corpus prompts (query 0 left out: it can
only see itself). Features are standardised (z-scores over heads), clustered with k-means
(scikit-learn, fixed ``random_state``) and embedded in 2-D with PCA for plotting - the head
"atlas" view of e.g. Gould et al. 2023 / the head-taxonomy surveys (Zheng et al. 2024,
"Attention Heads of Large Language Models: A Survey"), with the feature definitions of the
analyzers cited in their own modules.

Precomputed analyzer DataFrames go in ``frames={name: df}`` (their ``score`` column becomes the
feature ``name``; ``"sinks"`` becomes ``sink``); the cheap ones that are missing (sinks,
previous_token, duplicate_token, induction, entropy, distance) are computed here with the
analyzers' default tasks (their own default sizes, or ``n_prompts`` prompts; ``quick=True``:
4 prompts), without their causal checks; ``attrs["feature_stability"]`` carries each feature
analyzer's split-half rank stability.

Columns: ``layer, head, head_id``, one column per feature (raw values), ``cluster`` (0 = the
largest cluster), ``cluster_label`` (``"high <feature>"`` for the feature with the largest
standardised centre, ``"typical"`` when no centre exceeds 0.5 s.d.), ``x, y`` (PCA of the
standardised features), and ``score`` = the head's distance to its cluster centre in
standardised units (how atypical it is for its cluster; small = a clear member).
Causal evidence: none of its own - a cluster is not a head family with a task metric; the
causal checks of the analyzers whose frames were given are carried in
``attrs["causal_sources"]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from workbench.analyzers import classic, sinks  # noqa: F401  (register the cheap analyzers)
from workbench.analyzers.base import (
    Analyzer,
    AnalyzerError,
    Progress,
    Scan,
    get_analyzer,
    head_frame,
    register_analyzer,
    require_done,
)
from workbench.analyzers.params import (
    Check,
    count,
    flag,
    frames_check,
    word_list,
)
from workbench.analyzers.prompts import as_items
from workbench.analyzers.sinks import corpus_windows
from workbench.lm import LoadedModel

#: Analyzers the atlas computes itself when their frame is not given (cheap: a few forwards).
CHEAP_ANALYZERS = ("sinks", "previous_token", "duplicate_token", "induction")
#: Features from the kernels' statistics pass.
STAT_FEATURES = ("entropy", "distance")
#: Feature name of an analyzer's score (default: the analyzer's name).
FEATURE_NAME = {"sinks": "sink"}
RESERVED = ("layer", "head", "head_id", "score", "cluster", "cluster_label", "x", "y")
STAT_PROMPTS = 16  # corpus windows of the attention statistics when n_prompts is not given
QUICK = {"n_prompts": 4}  # quick mode: the earlier small task
LABEL_THRESHOLD = 0.5  # s.d.: a centre below this on every feature is "typical"


def feature_name(analyzer: str) -> str:
    return FEATURE_NAME.get(analyzer, analyzer)


def frame_feature(
    lm: LoadedModel, name: str, df: pd.DataFrame, column: str = "score"
) -> np.ndarray:
    """(n_layers, n_heads) array of ``df[column]``, checked to cover every head once."""
    if not isinstance(df, pd.DataFrame):
        raise AnalyzerError(f"frames[{name!r}] must be a DataFrame, got {type(df).__name__}")
    missing = {"layer", "head", column} - set(df.columns)
    if missing:
        raise AnalyzerError(f"frames[{name!r}] lacks column(s) {sorted(missing)}")
    n_layers, n_heads = lm.info.n_layers, lm.info.n_heads
    if len(df) != n_layers * n_heads or df[["layer", "head"]].duplicated().any():
        raise AnalyzerError(
            f"frames[{name!r}] has {len(df)} rows; the atlas needs one per head "
            f"({n_layers} x {n_heads} = {n_layers * n_heads}) of {lm.info.name}"
        )
    out = np.full((n_layers, n_heads), np.nan)
    layers, heads = df["layer"].to_numpy(int), df["head"].to_numpy(int)
    if layers.min() < 0 or layers.max() >= n_layers or heads.min() < 0 or heads.max() >= n_heads:
        raise AnalyzerError(f"frames[{name!r}] has layer/head indices outside this model")
    out[layers, heads] = pd.to_numeric(df[column], errors="coerce").to_numpy(float)
    return out


def attention_statistics(
    lm: LoadedModel, prompts: Sequence[str], progress: Progress
) -> tuple[dict, Scan]:
    """Per-head mean entropy and mean attention distance over the queries (>= 1) of
    ``prompts``, averaged over prompts, from the kernels' statistics (no maps)."""
    n_layers, n_heads = lm.info.n_layers, lm.info.n_heads
    ent = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    dist = torch.zeros_like(ent)
    with Scan(list(prompts), "atlas statistics", progress) as scan:
        for prompt in scan:
            enc, rec = lm.run_statistics(
                prompt, received=False, entropy=True, argmax=False, distance=True
            )
            if enc.n_tokens < 2:
                raise AnalyzerError(f"prompt {prompt!r} has fewer than 2 tokens")
            for layer in range(n_layers):
                stats = rec[layer].stats
                ent[layer] += stats["entropy"][0, :, 1:].double().mean(-1)
                dist[layer] += stats["distance"][0, :, 1:].double().mean(-1)
    require_done(scan, "atlas")
    return {"entropy": (ent / scan.done).numpy(), "distance": (dist / scan.done).numpy()}, scan


def _relabel_by_size(labels: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber clusters so 0 is the largest (ties: the one whose first head comes first)."""
    sizes = np.bincount(labels, minlength=n_clusters)
    first = np.array(
        [np.flatnonzero(labels == c)[0] if sizes[c] else 10**9 for c in range(n_clusters)]
    )
    order = sorted(range(n_clusters), key=lambda c: (-sizes[c], first[c]))
    new_of_old = np.empty(n_clusters, dtype=int)
    new_of_old[order] = np.arange(n_clusters)
    return new_of_old[labels], np.array(order)


def cluster_features(matrix: np.ndarray, n_clusters: int, seed: int) -> dict[str, np.ndarray]:
    """Standardise ``matrix`` (heads x features), k-means it, PCA it to 2-D.

    Returns ``labels`` (0 = largest cluster), ``centres`` (standardised), ``distance`` (each
    head to its centre), ``xy`` (heads x 2), ``explained`` (PCA variance ratios), ``z``.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit_transform(matrix)
    km = KMeans(n_clusters=n_clusters, random_state=seed, n_init=10).fit(z)
    labels, order = _relabel_by_size(km.labels_, n_clusters)
    centres = km.cluster_centers_[order]
    distance = np.linalg.norm(z - centres[labels], axis=1)
    n_comp = min(2, z.shape[1])
    pca = PCA(n_components=n_comp, random_state=seed)
    xy = pca.fit_transform(z)
    if n_comp < 2:
        xy = np.concatenate([xy, np.zeros((len(xy), 2 - n_comp))], axis=1)
    return {
        "labels": labels,
        "centres": centres,
        "distance": distance,
        "xy": xy,
        "explained": pca.explained_variance_ratio_,
        "z": z,
    }


@register_analyzer
class AtlasAnalyzer(Analyzer):
    """Head atlas: k-means clusters and a PCA map of per-head feature vectors built from the
    other analyzers' scores and kernel attention statistics; see the module docstring."""

    name = "atlas"
    summary = "clusters heads by their analyzer scores and attention statistics; 2-D map"
    uses_frames = True
    quick_params = QUICK
    checks: ClassVar[Mapping[str, Check]] = {
        "frames": frames_check,
        "compute_missing": flag(),
        "features": word_list(),
        "n_clusters": count(1),
        "n_prompts": count(1, optional=True),
    }

    def run(
        self,
        lm: LoadedModel,
        prompts=None,
        *,
        progress: Progress = True,
        frames: Mapping[str, pd.DataFrame] | None = None,
        compute_missing: bool = True,
        features: Sequence[str] | None = None,
        n_clusters: int = 6,
        seed: int = 0,
        n_prompts: int | None = None,
        prompt_tokens: int = 64,
        n_words: int = 20,
        quick: bool = False,
    ) -> pd.DataFrame:
        """``frames``: precomputed analyzer DataFrames by analyzer name. ``compute_missing``:
        compute the cheap features not given. ``features``: use only these feature names.
        ``prompts``: used for the sink, previous-token and statistics features (the duplicate
        and induction detectors keep their repeated-sequence task). ``n_prompts``: prompts of
        every computed feature (None: each analyzer's default size, :data:`STAT_PROMPTS` for
        the statistics)."""
        n_total = lm.info.n_layers * lm.info.n_heads
        if n_clusters > n_total:
            raise AnalyzerError(f"n_clusters={n_clusters} exceeds the number of heads ({n_total})")
        frames = dict(frames or {})
        for name in frames:
            if feature_name(name) in RESERVED:
                raise AnalyzerError(f"frames: {name!r} clashes with an atlas column name")
        wanted = features
        cheap = [feature_name(n) for n in CHEAP_ANALYZERS] + list(STAT_FEATURES)
        available = {feature_name(n) for n in frames} | (set(cheap) if compute_missing else set())
        if wanted is not None:  # checked before any feature is computed
            unknown = [f for f in wanted if f not in available]
            if unknown:
                raise AnalyzerError(
                    f"feature(s) {unknown} not available: pass their analyzer's frame "
                    f"(frames={{name: df}}) or use the computed ones ({', '.join(cheap)})"
                )
        if not available:
            raise AnalyzerError(
                "the atlas has no features: pass frames={name: df} or compute_missing=True"
            )

        def needed(feature: str) -> bool:
            return wanted is None or feature in wanted

        values: dict[str, np.ndarray] = {}
        sources: dict[str, str] = {}
        causal_sources: dict[str, Any] = {}
        stability: dict[str, Any] = {}
        for name, df in frames.items():
            if not needed(feature_name(name)):
                continue
            values[feature_name(name)] = frame_feature(lm, name, df)
            sources[feature_name(name)] = "given"
            stability[feature_name(name)] = df.attrs.get("stability")
            if "causal" in df.attrs:
                causal_sources[name] = df.attrs["causal"]

        items = as_items(prompts)
        user_prompts = [item["prompt"] for item in items] or None
        to_compute = [
            name
            for name in CHEAP_ANALYZERS
            if compute_missing and feature_name(name) not in values and needed(feature_name(name))
        ]
        missing_stats = [
            f for f in STAT_FEATURES if compute_missing and f not in values and needed(f)
        ]
        stat_prompts: list[str] = []
        if missing_stats:  # encoded (and checked) before any forward
            stat_prompts = user_prompts or corpus_windows(
                lm, n_prompts or STAT_PROMPTS, prompt_tokens
            )
            for i, prompt in enumerate(stat_prompts):
                if lm.encode(prompt).n_tokens < 2:
                    raise AnalyzerError(
                        f"atlas: prompt {i} ({prompt!r:.60}) has fewer than 2 tokens; the "
                        "attention statistics need at least 2"
                    )
        scan_attrs: dict[str, Any] = {}
        shared = {
            "progress": progress,
            "causal": False,
            "prompt_tokens": prompt_tokens,
            "n_words": n_words,
            "seed": seed,
            **({} if n_prompts is None else {"n_prompts": n_prompts}),
        }
        for name in to_compute:
            analyzer = get_analyzer(name)
            task = user_prompts if name in ("sinks", "previous_token") else None
            df = analyzer.run(lm, task, **analyzer.select(shared))
            values[feature_name(name)] = frame_feature(lm, name, df)
            sources[feature_name(name)] = f"computed ({df.attrs.get('prompts_used')} prompts)"
            stability[feature_name(name)] = df.attrs.get("stability")
        if missing_stats:
            stats, scan = attention_statistics(lm, stat_prompts, progress)
            for f in missing_stats:
                values[f] = stats[f]
                sources[f] = f"computed ({scan.done} prompts)"
            scan_attrs = scan.attrs()
        if not values:
            raise AnalyzerError(
                "the atlas has no features: pass frames={name: df} or compute_missing=True"
            )
        names = list(values)
        matrix = np.stack([values[f].reshape(-1) for f in names], axis=1)
        filled = {}
        for j, f in enumerate(names):
            bad = ~np.isfinite(matrix[:, j])
            if bad.all():
                raise AnalyzerError(f"feature {f!r} has no finite value")
            if bad.any():  # e.g. heads an analyzer could not score: use the feature's mean
                matrix[bad, j] = matrix[~bad, j].mean()
                filled[f] = int(bad.sum())

        result = cluster_features(matrix, n_clusters, seed)
        labels = result["labels"]
        centres = result["centres"]
        cluster_labels = []
        profiles = {}
        for c in range(n_clusters):
            best = int(np.argmax(centres[c]))
            label = f"high {names[best]}" if centres[c, best] > LABEL_THRESHOLD else "typical"
            cluster_labels.append(label)
            members = labels == c
            profiles[str(c)] = {
                "label": label,
                "size": int(members.sum()),
                "centre_z": {f: round(float(centres[c, j]), 4) for j, f in enumerate(names)},
                "mean": {f: float(matrix[members, j].mean()) for j, f in enumerate(names)},
            }

        n_layers, n_heads = lm.info.n_layers, lm.info.n_heads

        def grid(vec: np.ndarray) -> np.ndarray:
            return np.asarray(vec).reshape(n_layers, n_heads)

        evidence: dict[str, Any] = {f: grid(matrix[:, j]) for j, f in enumerate(names)}
        evidence["cluster"] = grid(labels)
        evidence["cluster_label"] = grid(np.array([cluster_labels[c] for c in labels]))
        evidence["x"] = grid(result["xy"][:, 0])
        evidence["y"] = grid(result["xy"][:, 1])
        attrs: dict[str, Any] = {
            "analyzer": self.name,
            "definition": (
                "features standardised over heads; KMeans(n_clusters, random_state=seed, "
                "n_init=10); x, y = PCA(2) of the standardised features; score = distance to "
                "the head's cluster centre (standardised units)"
            ),
            "params": {
                "n_clusters": n_clusters,
                "seed": seed,
                "n_prompts": n_prompts,
                "prompt_tokens": prompt_tokens,
                "compute_missing": compute_missing,
            },
            "features": names,
            "feature_sources": sources,
            "filled_with_mean": filled,
            "cluster_sizes": {str(c): int((labels == c).sum()) for c in range(n_clusters)},
            "clusters": profiles,
            "pca_explained_variance": [float(v) for v in result["explained"]],
            "causal": {
                "skipped": "the atlas groups heads by their features; a cluster is not a head "
                "family with a task metric. See causal_sources for the feature analyzers' "
                "own top-k vs random-k checks."
            },
            "causal_sources": causal_sources,
            "uncertainty": {
                "none": "the atlas score is a head's distance to its cluster centre, not a mean "
                "over prompts: no interval (see feature_stability for the features' own)"
            },
            "feature_stability": stability,
            **scan_attrs,
        }
        attrs.setdefault("prompts_used", scan_attrs.get("prompts_used", 0))
        return head_frame(lm, grid(result["distance"]), evidence, attrs)


__all__ = [
    "CHEAP_ANALYZERS",
    "AtlasAnalyzer",
    "attention_statistics",
    "cluster_features",
    "feature_name",
    "frame_feature",
]
