"""Head atlas: clustering of designed feature vectors (known answer), determinism, and the
computed features on the embedded model checked against eager attention maps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import SHORT_PROMPT
from workbench.analyzers import atlas
from workbench.analyzers.base import head_frame
from workbench.errors import WorkbenchError

pytestmark = pytest.mark.model

SINK_HEADS = [(0, 1), (3, 4), (7, 2), (10, 0), (15, 5), (20, 8), (25, 3), (29, 6)]
INDUCTION_HEADS = [(5, 1), (6, 2), (8, 3), (12, 4), (14, 7)]


def designed_frames(lm, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Synthetic analyzer outputs: 8 sink heads, 5 induction heads, the rest low noise."""
    gen = np.random.default_rng(seed)
    shape = (lm.info.n_layers, lm.info.n_heads)
    sink = gen.uniform(0.0, 0.1, shape)
    induction = gen.uniform(0.0, 0.05, shape)
    for layer, head in SINK_HEADS:
        sink[layer, head] = gen.uniform(0.8, 0.9)
    for layer, head in INDUCTION_HEADS:
        induction[layer, head] = gen.uniform(0.6, 0.7)
    return {"sinks": head_frame(lm, sink), "induction": head_frame(lm, induction)}


def test_designed_clusters_found(lm):
    """Three designed groups come back as three clusters with the right labels and sizes."""
    frames = designed_frames(lm)
    df = atlas.AtlasAnalyzer().run(
        lm, frames=frames, compute_missing=False, n_clusters=3, progress=False
    )
    assert len(df) == lm.info.n_layers * lm.info.n_heads
    for column in ("layer", "head", "head_id", "score", "sink", "induction", "cluster", "x", "y"):
        assert column in df.columns
    assert df.attrs["features"] == ["sink", "induction"]
    assert df.attrs["cluster_sizes"] == {"0": 270 - 13, "1": 8, "2": 5}
    by_head = df.set_index(["layer", "head"])
    assert set(by_head.loc[SINK_HEADS, "cluster"]) == {1}
    assert set(by_head.loc[INDUCTION_HEADS, "cluster"]) == {2}
    labels = {c: p["label"] for c, p in df.attrs["clusters"].items()}
    assert labels == {"0": "typical", "1": "high sink", "2": "high induction"}
    assert np.allclose(
        df["sink"].to_numpy().reshape(30, 9), frames["sinks"]["score"].to_numpy().reshape(30, 9)
    )
    # score = distance to the cluster centre in standardised units, recomputed here
    feats = df[["sink", "induction"]]
    z = (feats - feats.mean()) / feats.std(ddof=0)
    centres = z.groupby(df["cluster"]).transform("mean")
    assert np.allclose(df["score"], np.linalg.norm(z - centres, axis=1), atol=1e-6)
    assert "skipped" in df.attrs["causal"]


def test_determinism_and_seed(lm):
    frames = designed_frames(lm, seed=1)
    # a fourth, noisy feature so that k-means has real choices to make
    gen = np.random.default_rng(3)
    frames["retrieval"] = head_frame(lm, gen.normal(size=(30, 9)))
    run = atlas.AtlasAnalyzer().run
    a = run(lm, frames=frames, compute_missing=False, n_clusters=5, seed=0, progress=False)
    b = run(lm, frames=frames, compute_missing=False, n_clusters=5, seed=0, progress=False)
    pd.testing.assert_frame_equal(a, b)
    assert sorted(a["cluster"].unique()) == [0, 1, 2, 3, 4]
    sizes = list(a.attrs["cluster_sizes"].values())
    assert sizes == sorted(sizes, reverse=True)  # 0 = largest
    only = run(
        lm, frames=frames, compute_missing=False, features=["sink"], n_clusters=2, progress=False
    )
    assert only.attrs["features"] == ["sink"] and (only["y"] == 0).all()


def test_computed_features_real(lm, eager_maps):
    """Computed features on the real model; entropy and distance equal the values from eager
    output_attentions maps; sink/induction columns equal the analyzers' own scores."""
    enc, attentions, _ = eager_maps
    df = atlas.AtlasAnalyzer().run(
        lm, [SHORT_PROMPT], n_prompts=2, n_words=10, n_clusters=4, progress=False
    )
    expected = ["sink", "previous_token", "duplicate_token", "induction", "entropy", "distance"]
    assert df.attrs["features"] == expected
    assert sum(df.attrs["cluster_sizes"].values()) == 270
    n = enc.n_tokens
    pos = torch.arange(n, dtype=torch.float64)
    dist = (pos.view(-1, 1) - pos.view(1, -1)).clamp(min=0)
    for layer in (0, 5, 17, 29):
        a = attentions[layer][0].double()  # (H, L, L)
        entropy = -torch.special.xlogy(a, a).sum(-1)[:, 1:].mean(-1)
        distance = (a * dist).sum(-1)[:, 1:].mean(-1)
        rows = df[df["layer"] == layer].sort_values("head")
        assert np.allclose(rows["entropy"], entropy.numpy(), atol=1e-4)
        assert np.allclose(rows["distance"], distance.numpy(), atol=1e-3)
        prev = torch.diagonal(a, offset=-1, dim1=-2, dim2=-1).sum(-1) / a.sum((-1, -2))
        assert np.allclose(rows["previous_token"], prev.numpy(), atol=1e-4)
        sink = a[:, :, 0].sum(-1) / n
        assert np.allclose(rows["sink"], sink.numpy(), atol=1e-4)
    print(df.attrs["clusters"])


def test_atlas_errors(lm):
    run = atlas.AtlasAnalyzer().run
    frames = designed_frames(lm)
    with pytest.raises(WorkbenchError, match="n_clusters"):
        run(lm, frames=frames, compute_missing=False, n_clusters=0, progress=False)
    with pytest.raises(WorkbenchError, match="exceeds"):
        run(lm, frames=frames, compute_missing=False, n_clusters=271, progress=False)
    with pytest.raises(WorkbenchError, match="one per head"):
        run(lm, frames={"sinks": frames["sinks"].head(10)}, compute_missing=False)
    with pytest.raises(WorkbenchError, match="not available"):
        run(lm, frames=frames, compute_missing=False, features=["safety"], progress=False)
    with pytest.raises(WorkbenchError, match="no features"):
        run(lm, compute_missing=False, progress=False)
    with pytest.raises(WorkbenchError, match="lacks"):
        run(lm, frames={"sinks": frames["sinks"].drop(columns="score")}, compute_missing=False)
    with pytest.raises(WorkbenchError, match="empty"):
        run(lm, [], progress=False)
