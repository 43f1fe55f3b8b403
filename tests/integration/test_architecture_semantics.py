"""Each architecture row's attention semantics, checked against transformers' own eager forward.

Tiny randomly initialised models are built from each family's config inside the tests
(:mod:`tests.tiny_models`: a few layers, GQA, a sliding window of 8 shorter than the 14-token
prompts, softcaps where the family has them, random learned sinks for gpt-oss); nothing is
downloaded. The
independent computations are transformers' eager attention (``output_attentions``), plain torch
forward hooks on the output projection, and each family's own ``eager_attention_forward`` with
the query of one head scaled by hand.
"""

from __future__ import annotations

import copy
import functools
import importlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

import probes
import workbench
from kernels import available_backends
from probes.semantics import INERT_KEYWORDS, MODELLED_KEYWORDS
from tests.tiny_models import FAMILIES, WINDOW, tiny_model
from workbench import interventions as iv

N_TOKENS = 14
TOL = 1e-5
NAMES = sorted(FAMILIES)

#: Set in the child process that re-runs these checks on the Triton path (interpreter).
BACKEND_ENV = "WORKBENCH_TEST_KERNEL_BACKEND"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _kernel_backend():
    """Every check on the kernel backend the environment names (default: auto)."""
    with probes.kernel_backend(os.environ.get(BACKEND_ENV, "auto")):
        yield


@functools.cache
def _models(family: str):
    """(eager reference model, workbench LoadedModel on an identical copy)."""
    ref = tiny_model(family, attn_implementation="eager")
    lm = workbench.wrap_model(copy.deepcopy(ref), None, family)
    return ref, lm


def _ids(batch: int = 2, n: int = N_TOKENS, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 256, (batch, n), generator=g)


def _padded() -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded batch: row 0 full, row 1 with 4 pad tokens."""
    ids = _ids()
    mask = torch.ones_like(ids)
    ids[1, :4] = 0
    mask[1, :4] = 0
    return ids, mask


def _sliding(ref, layer: int) -> bool:
    """Whether ``layer`` is a sliding-window layer, from the config alone."""
    cfg = ref.config
    types = getattr(cfg, "layer_types", None)
    if types is not None:
        return types[layer] == "sliding_attention"
    return getattr(cfg, "sliding_window", None) is not None


def _visible(ref, layer: int, n: int) -> torch.Tensor:
    """(n, n) bool: causal, and inside the window on sliding layers (hand-written rule)."""
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    vis = j <= i
    if _sliding(ref, layer):
        vis &= i - WINDOW < j
    return vis


def _logit_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest logit difference relative to the logits' scale (at least 1)."""
    return float((got - want).abs().max() / want.abs().max().clamp(min=1.0))


@torch.no_grad()
def _eager(ref, ids, mask=None):
    return ref(input_ids=ids, attention_mask=mask, output_attentions=True)


@pytest.mark.parametrize("family", NAMES)
def test_logits_equal_eager_with_and_without_probes(family):
    ref, lm = _models(family)
    ids, mask = _padded()
    want = _eager(ref, ids, mask).logits
    keep = mask.bool()
    with torch.no_grad():
        plain = lm.model(input_ids=ids, attention_mask=mask).logits
        with lm.capture(maps=False, z=True):
            hooked = lm.model(input_ids=ids, attention_mask=mask).logits
    assert _logit_error(plain[keep], want[keep]) <= TOL
    assert _logit_error(hooked[keep], want[keep]) <= TOL
    unpadded = _ids()
    with torch.no_grad():
        plain = lm.model(input_ids=unpadded).logits
    assert _logit_error(plain, _eager(ref, unpadded).logits) <= TOL


@pytest.mark.parametrize("family", NAMES)
def test_maps_equal_eager_output_attentions(family):
    ref, lm = _models(family)
    for ids, mask in ((_ids(), None), _padded()):
        want = _eager(ref, ids, mask).attentions
        with torch.no_grad(), lm.capture(maps=True) as cap:
            lm.model(input_ids=ids, attention_mask=mask)
        for layer in range(lm.info.n_layers):
            got = cap.records[layer].maps
            rows = slice(None) if mask is None else mask[:, :, None].bool().expand_as(got[:, 0])
            diff = (got - want[layer]).abs()
            assert (diff.amax(1)[rows] if mask is not None else diff).max() <= TOL, layer


@pytest.mark.parametrize("family", NAMES)
def test_statistics_equal_the_ones_computed_from_eager_maps(family):
    ref, lm = _models(family)
    ids = _ids()
    maps = _eager(ref, ids).attentions
    with torch.no_grad(), lm.statistics(received=True, entropy=True, argmax=True) as st:
        lm.model(input_ids=ids)
    for layer in range(lm.info.n_layers):
        a = maps[layer].double()  # (B, H, L, L)
        stats = st.records[layer].stats
        vis = _visible(ref, layer, N_TOKENS)
        received = a.sum(-2)
        sink = received / vis.sum(0).double()
        rest = (1.0 - a.sum(-1)).clamp(min=0.0)  # mass a learned sink took (0 elsewhere)
        entropy = -torch.special.xlogy(a, a).sum(-1) - torch.special.xlogy(rest, rest)
        assert (stats["received"].double() - received).abs().max() <= TOL
        assert (stats["sink"].double() - sink).abs().max() <= TOL
        assert (stats["entropy"].double() - entropy).abs().max() <= 1e-4
        assert (stats["argmax_prob"].double() - a.amax(-1)).abs().max() <= TOL
        if family == "gpt_oss":
            assert (stats["sink_mass"].double() - rest).abs().max() <= TOL
            assert rest.max() > 0.05  # the learned sinks really take mass in this test
        else:
            assert "sink_mass" not in stats
            assert rest.max() <= 1e-6


def _out_projection_hook(lm, layer: int, head: int):
    """A plain torch pre-hook zeroing one head's slice of the output projection's input."""
    d = lm.info.head_dim

    def zero(module, args):
        x = args[0].clone()
        x[..., head * d : (head + 1) * d] = 0
        return (x, *args[1:])

    return lm.layout.out_projections[layer].register_forward_pre_hook(zero)


def test_zero_ablation_equals_zeroing_the_output_projection_input():
    for family in NAMES:
        _, lm = _models(family)
        ids = _ids()
        handle = _out_projection_hook(lm, 1, 2)
        try:
            with torch.no_grad():
                want = lm.model(input_ids=ids).logits  # no workbench hook: the plain path
        finally:
            handle.remove()
        with torch.no_grad(), iv.ZeroAblation(lm, ["L1H2"]):
            got = lm.model(input_ids=ids).logits
        assert _logit_error(got, want) <= TOL, family


def _scaled_query_attention(layer: int, head: int, eps: float):
    """The family's own eager attention with one head's query scaled by hand."""

    def attention(module, query, key, value, attention_mask, **kwargs):
        eager = importlib.import_module(type(module).__module__).eager_attention_forward
        if module.layer_idx == layer:
            query = query.clone()
            query[:, head] *= eps
        return eager(module, query, key, value, attention_mask, **kwargs)

    return attention


def test_uniform_ablation_equals_the_family_eager_forward_with_a_scaled_query():
    AttentionMaskInterface.register("test_scaled_query", eager_mask)
    for family in NAMES:
        ref, lm = _models(family)
        edited = copy.deepcopy(ref)
        AttentionInterface.register(
            "test_scaled_query", _scaled_query_attention(2, 1, iv.ablation.UNIFORM_EPS)
        )
        edited.set_attn_implementation("test_scaled_query")
        ids = _ids()
        with torch.no_grad():
            want = edited(input_ids=ids).logits
            with iv.UniformAblation(lm, ["L2H1"]):
                got = lm.model(input_ids=ids).logits
        assert _logit_error(got, want) <= TOL, family
        assert _logit_error(got, lm.model(input_ids=ids).logits) > 10 * TOL, family  # it acted


@pytest.mark.parametrize("family", NAMES)
def test_cached_generate_with_a_probe_equals_step_by_step_recomputation(family):
    ref, lm = _models(family)
    ids = _ids(batch=1, n=10, seed=3)
    new = 6
    with torch.no_grad(), lm.capture(maps=True) as cap:
        out = lm.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
            do_sample=False, pad_token_id=0,
        )  # fmt: skip
    seq = ids
    for _ in range(new):  # greedy, no cache, the eager reference
        nxt = _eager(ref, seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out[:, : seq.shape[1]], seq)
    maps = _eager(ref, seq[:, :-1]).attentions  # every position that was a query
    for layer in range(lm.info.n_layers):
        records = cap.records.steps(layer)
        assert records == new  # prefill + new - 1 decode steps, the last token never queries
        for step in range(1, new):
            rec = cap.records[layer, step]
            pos = ids.shape[1] + step - 1
            got = rec.maps[0, :, 0]  # (H, Lk): the decode query's row over its cached keys
            want = maps[layer][0, :, pos, pos + 1 - got.shape[-1] : pos + 1]
            assert (got - want).abs().max() <= TOL, (layer, step)


def _recording_attention(seen: dict):
    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        seen.update({k: v for k, v in kwargs.items() if v is not None and k != "is_causal"})
        eager = importlib.import_module(type(module).__module__).eager_attention_forward
        return eager(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )

    return attention


@pytest.mark.parametrize("family", NAMES)
def test_every_attention_keyword_is_modelled_or_known_inert(family):
    """The keywords each row's modules pass (forward and cached generation) are all in the
    attention path's tables: modelled by the kernels or known to change nothing; any other
    keyword is refused (test_unknown_keyword_is_refused)."""
    ref, _ = _models(family)
    seen: dict = {}
    AttentionInterface.register("test_recording", _recording_attention(seen))
    AttentionMaskInterface.register("test_recording", eager_mask)
    model = copy.deepcopy(ref)
    model.set_attn_implementation("test_recording")
    ids = _ids(batch=1)
    with torch.no_grad():
        model(input_ids=ids)
        model.generate(input_ids=ids, max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert set(seen) <= set(MODELLED_KEYWORDS) | INERT_KEYWORDS, sorted(seen)


def test_unknown_keyword_is_refused_naming_architecture_and_keyword():
    from probes.attention_path import workbench_attention
    from probes.semantics import AttentionKeywordError

    _, lm = _models("gemma2")
    module = lm.layout.attention_modules[0]
    q = torch.zeros(1, 4, 3, 16)
    kv = torch.zeros(1, 2, 3, 16)
    with pytest.raises(AttentionKeywordError, match=r"gemma2.*'alibi_slopes'"):
        workbench_attention(module, q, kv, kv, None, alibi_slopes=torch.ones(4))


def test_sliding_layers_build_no_mask_for_an_unpadded_batch():
    """The window is a band in the kernels: transformers' L x L sliding mask is never built."""
    _, lm = _models("gemma2")
    seen = []

    def spy(module, args, kwargs):
        seen.append((module.layer_idx, kwargs.get("attention_mask")))

    handles = [
        m.register_forward_pre_hook(spy, with_kwargs=True) for m in lm.layout.attention_modules
    ]
    try:
        with torch.no_grad():
            lm.model(input_ids=_ids())
    finally:
        for h in handles:
            h.remove()
    assert [layer for layer, mask in seen if mask is not None] == []


@functools.lru_cache(maxsize=1)
def _tokenizer():
    """The embedded model's tokenizer: real text for the analyzers, nothing downloaded."""
    from transformers import AutoTokenizer

    from workbench.models import ensure_embedded_cache

    return AutoTokenizer.from_pretrained(ensure_embedded_cache(), local_files_only=True)


def _text_models(family: str):
    """(eager reference, LoadedModel) of ``family`` with the embedded tokenizer's vocabulary."""
    tokenizer = _tokenizer()
    ref = tiny_model(family, attn_implementation="eager", vocab_size=len(tokenizer))
    return ref, workbench.wrap_model(copy.deepcopy(ref), tokenizer, family)


PROMPT = "The cat sat on the mat. The dog sat on the rug. The cat sat on the mat again."


def test_classic_detectors_run_on_every_row_with_scores_from_eager_maps():
    from workbench.analyzers import analyze

    for family in NAMES:
        ref, lm = _text_models(family)
        df = analyze("previous_token", lm, [PROMPT], progress=False, top_k=2, draws=1)
        assert len(df) == lm.info.n_layers * lm.info.n_heads
        maps = _eager(ref, lm.encode(PROMPT).input_ids).attentions
        for layer in range(lm.info.n_layers):
            a = maps[layer][0].double()  # (H, L, L)
            prev = torch.diagonal(a, offset=-1, dim1=-2, dim2=-1).sum(-1) / a.sum((-2, -1))
            got = df[df.layer == layer].sort_values("head").score.to_numpy()
            assert max(abs(got - prev.numpy())) <= 1e-4, (family, layer)
        assert math.isfinite(df.attrs["causal"]["base"]), family


def test_sinks_analyzer_reports_the_learned_sink_mass_next_to_first_token_sinks():
    from workbench.analyzers import analyze

    ref, lm = _text_models("gpt_oss")
    df = analyze("sinks", lm, [PROMPT], progress=False, causal=False)
    assert df.attrs["learned_sinks"] is True
    maps = _eager(ref, lm.encode(PROMPT).input_ids).attentions
    for layer in range(lm.info.n_layers):
        rest = 1.0 - maps[layer][0].double().sum(-1)  # (H, L): mass not on any real key
        got = df[df.layer == layer].sort_values("head").learned_sink_mass.to_numpy()
        assert max(abs(got - rest.mean(-1).numpy())) <= 1e-5, layer
        logit = df[df.layer == layer].sort_values("head").learned_sink_logit.to_numpy()
        assert (logit == ref.model.layers[layer].self_attn.sinks.detach().numpy()).all()
    _, plain = _text_models("llama")
    df = analyze("sinks", plain, [PROMPT], progress=False, causal=False)
    assert df.attrs["learned_sinks"] is False
    assert "learned_sink_mass" not in df.columns
    assert "learned_sink_logit" not in df.columns


#: The rows whose kernel calls differ (GQA or not, sliding windows on some or all layers, softcap,
#: learned sinks): the Triton run covers every kernel feature with these; what else differs
#: between rows is model plumbing, the same on either backend and checked above for every row.
TRITON_FAMILIES = ("llama", "mistral", "gemma2", "gpt_oss", "gpt_neox")


def test_the_triton_path_passes_the_same_checks_under_the_interpreter():
    """The maps, statistics, logits, ablation and cached-generation checks above, re-run with
    every kernel call on the Triton backend (TRITON_INTERPRET=1 in a fresh process: it must be
    set before triton is imported), for the rows of :data:`TRITON_FAMILIES`."""
    if os.environ.get(BACKEND_ENV):
        pytest.skip("this is the child run")
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    if "triton" in available_backends("cpu"):
        pytest.skip("the interpreter is active in this process: run the checks here directly")
    env = {**os.environ, "TRITON_INTERPRET": "1", BACKEND_ENV: "triton"}
    families = " or ".join(f"[{name}]" for name in TRITON_FAMILIES)
    checks = f"(logits or maps or statistics or ablation or cached_generate) and ({families})"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", checks, __file__],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout, proc.stdout[-2000:]


def _every_intervention(lm) -> dict[str, iv.Intervention]:
    """One instance of every registered steering/ablation intervention on heads of a sliding
    and a full layer."""
    heads = [(0, 1), (1, 2), (2, 3)]
    d = lm.info.head_dim
    g = torch.Generator().manual_seed(5)
    means = iv.HeadMeans(torch.randn(lm.info.n_layers, lm.info.n_heads, d, generator=g), 1, 1)
    directions = {
        workbench.Head(layer, head): (torch.randn(d, generator=g), torch.randn(d, generator=g))
        for layer, head in heads
    }
    focus = iv.FocusDirectionSet(directions=directions, model="tiny")
    return {
        "zero": iv.ZeroAblation(lm, heads),
        "uniform": iv.UniformAblation(lm, heads),
        "scale": iv.ScaleAblation(lm, heads, factor=0.5),
        "mean": iv.MeanAblation(lm, heads, means=means),
        "pasta": iv.Pasta(lm, heads, spans=[(3, 7)], n_prompt_tokens=N_TOKENS, alpha=0.01),
        "act": iv.AttentionCalibration(lm, heads, beta=0.4, threshold=0.05),
        "temperature": iv.Temperature(lm, heads, temperature=0.5),
        "focus": iv.FocusDirections(lm, focus, scale=1.0),
    }


@pytest.mark.parametrize("family", ["gemma2", "gpt_oss", "cohere2", "mistral"])
def test_every_intervention_composes_with_softcap_window_and_sinks(family):
    """Each intervention on a softcapped / windowed / learned-sink model gives the same logits
    on the blockwise kernels as on the float64 reference kernels (whose semantics are checked
    against transformers' eager attention in the kernel tests), and changes the logits."""
    if os.environ.get(BACKEND_ENV):
        pytest.skip("compares two backends itself")
    _, lm = _models(family)
    ids = _ids(batch=1)
    with torch.no_grad():
        base = lm.model(input_ids=ids).logits
        for name, intervention in _every_intervention(lm).items():
            got = {}
            for backend in ("torch", "reference"):
                with probes.kernel_backend(backend), intervention:
                    got[backend] = lm.model(input_ids=ids).logits
            assert _logit_error(got["torch"], got["reference"]) <= TOL, name
            assert _logit_error(got["torch"], base) > 10 * TOL, f"{name} changed nothing"


@pytest.mark.parametrize("family", ["gemma2", "gpt_oss", "cohere2"])
def test_act_equals_its_rule_applied_by_hand_to_eager_maps(family):
    """ACT (Yu et al. 2024) recomputes sink-key probabilities itself: check it on softcapped,
    windowed and learned-sink layers against the rule applied to transformers' eager maps."""
    ref, lm = _models(family)
    ids = _ids(batch=1)
    # The rule divides by 1 - P_iS, small on rows that attend mostly to the sinks: apply it to
    # float64 eager maps (gpt-oss's MoE has no float64 kernels: float32 maps, and only the
    # rows where 1 - P_iS >= 0.01 are compared).
    try:
        maps, exact = _eager(copy.deepcopy(ref).double(), ids).attentions, True
    except RuntimeError:
        maps, exact = _eager(ref, ids).attentions, False
    beta = 0.4
    for layer, head in [(0, 1), (1, 2)]:  # a sliding and a full layer
        a = maps[layer][0, head].double()  # (L, L) eager probabilities
        score = (a.sum(0) / _visible(ref, layer, N_TOKENS).sum(0))[1:]
        top = score.sort(descending=True).values
        threshold = float(top[1] + top[2]) / 2  # the two strongest non-initial keys are sinks
        sinks = (torch.nonzero(score > threshold).flatten() + 1).tolist()
        act = iv.AttentionCalibration(lm, [(layer, head)], beta=beta, threshold=threshold)
        with torch.no_grad(), act, lm.capture(layers=[layer], maps=False, qkv=True, z=True) as cap:
            lm.model(input_ids=ids)
        p_sink = a[:, sinks].sum(-1, keepdim=True)
        calibrated = a * (1 - beta * p_sink) / (1 - p_sink)
        calibrated[:, sinks] = beta * a[:, sinks]
        want = calibrated @ cap.records[layer].v[0, head].double()  # (L, D)
        got = cap.records[layer].z[0, head].double()
        rows = torch.ones(N_TOKENS, dtype=torch.bool) if exact else (1 - p_sink[:, 0]) >= 0.01
        assert rows.sum() >= N_TOKENS // 2, (family, layer)
        assert _logit_error(got[rows], want[rows]) <= TOL, (family, layer)
