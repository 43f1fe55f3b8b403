"""Copy-suppression heads (McDougall et al. 2023): heads whose OV circuit lowers the logit of the
very token they attend to."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import pandas as pd
import torch
from torch import Tensor

from workbench.analyzers.base import (
    Analyzer,
    AnalyzerError,
    Progress,
    Scan,
    head_frame,
    register_analyzer,
    require_done,
    top_heads,
)
from workbench.analyzers.causal import CHEAP_DRAWS, causal_evidence
from workbench.analyzers.ov_circuit import (
    EMBEDDINGS,
    effective_embeddings,
    head_values,
    head_writers,
    readout,
    unembedding_weight,
)
from workbench.analyzers.params import Check, count, one_of
from workbench.analyzers.prompts import as_items
from workbench.analyzers.sinks import corpus_windows
from workbench.batching import right_pad
from workbench.generation import pad_id
from workbench.lm import Encoded, LoadedModel, kernel_errors_translated

#: Default number of vocabulary tokens scored (a seeded uniform sample; the paper scores all
#: 50,257 of GPT-2's): the share's standard error is at most 0.5 / sqrt(256) = 0.031, and the
#: whole run stays near a minute on a 2-core CPU (each token costs a pass over the vocabulary
#: per head). ``n_tokens`` up to the vocabulary size scores more.
N_TOKENS = 256
CAUSAL_PROMPTS = 8
BOTTOM_K = 10  # the reference's second statistic: own token among the 10 most suppressed
QUICK = {"n_tokens": 64, "causal_prompts": 4, "draws": 3}
SOURCE_CHUNK = 256  # source tokens per (chunk, V) logit block


def vocabulary_sample(lm: LoadedModel, n_tokens: int, seed: int) -> list[int]:
    """``n_tokens`` distinct token ids drawn uniformly (seeded) from the vocabulary of the
    unembedding, special tokens left out; the whole vocabulary when it is smaller."""
    vocab = int(unembedding_weight(lm).shape[0])
    special = set(getattr(lm.tokenizer, "all_special_ids", None) or [])
    order = torch.randperm(vocab, generator=torch.Generator().manual_seed(seed)).tolist()
    return [t for t in order if t not in special][:n_tokens]


def prompt_tokens_of(encodings: Sequence[Encoded]) -> list[int]:
    """The distinct token ids of ``encodings``, in order of first appearance."""
    seen: dict[int, None] = {}
    for enc in encodings:
        seen.update(dict.fromkeys(int(t) for t in enc.input_ids[0]))
    return list(seen)


@torch.no_grad()
def copy_suppression_items(
    lm: LoadedModel,
    token_ids: Sequence[int],
    embedding: str = "block0",
    progress: Progress = False,
    layers: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Scan]:
    """Per source token and head, whether its own logit is the most suppressed one.

    For every head (layer l, head h) and token s of ``token_ids``: the full OV circuit row
    ``OV[s, :]`` over the whole vocabulary (:mod:`workbench.analyzers.ov_circuit`, effective
    embedding ``embedding``) and the rank of ``OV[s, s]`` from the bottom, counting ties
    against it (``rank = #{t != s : OV[s, t] <= OV[s, s]}``).

    Returns ``(most (n, L, H), bottom (n, L, H), self_z (n, L, H), scan)``: ``most`` 1.0 where
    rank = 0 (s is strictly the most suppressed token), ``bottom`` 1.0 where rank <
    :data:`BOTTOM_K`, ``self_z`` the z-score of ``OV[s, s]`` within its row (negative:
    suppressed, exact in float64: :func:`own_z`); NaN for layers an interrupted scan did not
    reach, and for layers not in ``layers`` (default: all). Ranks come from float32 logits.
    """
    ids = torch.as_tensor(list(token_ids), dtype=torch.long)
    n, n_layers, n_heads = len(ids), lm.info.n_layers, lm.info.n_heads
    layers = range(n_layers) if layers is None else layers
    shape = (n, n_layers, n_heads)
    most = torch.full(shape, float("nan"), dtype=torch.float64)
    bottom, self_z = most.clone(), most.clone()
    resid = effective_embeddings(lm, ids.tolist(), embedding)
    moments = unembedding_moments(lm)
    w_own = unembedding_weight(lm)[ids.to(resid.device)]
    with Scan(list(layers), "copy_suppression", progress) as scan:
        for layer in scan:
            circuit = readout(lm, layer)  # (H, D, V)
            values = head_values(lm, layer, resid).to(circuit)  # (n, H, D)
            own_ids = ids.to(circuit.device)
            z = own_z(values, head_writers(lm, layer), moments, w_own)
            self_z[:, layer] = z.cpu()
            rows = torch.arange(n, device=circuit.device)
            for head in range(n_heads):
                for first in range(0, n, SOURCE_CHUNK):
                    part = slice(first, first + SOURCE_CHUNK)
                    logits = values[part, head] @ circuit[head]  # (c, V)
                    own = logits[rows[: logits.shape[0]], own_ids[part]][:, None]
                    rank = (logits <= own).sum(-1) - 1
                    most[part, layer, head] = (rank == 0).double().cpu()
                    bottom[part, layer, head] = (rank < BOTTOM_K).double().cpu()
    return most, bottom, self_z, scan


@torch.no_grad()
def unembedding_moments(lm: LoadedModel) -> tuple[Tensor, Tensor]:
    """``(mean_t W_U[t] (d,), W_U^T W_U / V (d, d))`` float64: with them a logit row's mean
    and second moment over the vocabulary come from its direction alone."""
    w_u = unembedding_weight(lm).double()
    return w_u.mean(0), w_u.T @ w_u / w_u.shape[0]


def own_z(values: Tensor, writers: Tensor, moments: tuple[Tensor, Tensor], w_own: Tensor) -> Tensor:
    """(n, H) z-score of ``OV[s, s]`` within its row over the whole vocabulary (population
    standard deviation), exactly in float64: the row is ``W_U x`` with ``x = v_h . writers[h]``
    (``values`` (n, H, D), ``writers`` (H, D, d), ``w_own`` (n, d) the own tokens' ``W_U``
    rows), so its mean is ``mu . x`` and its second moment ``x^T M x`` (``moments``)."""
    mean_u, second_u = (m.to(writers.device) for m in moments)
    x = torch.einsum("nhd,hde->nhe", values.double().to(writers.device), writers)  # (n, H, d)
    mean = x @ mean_u
    second = torch.einsum("nhd,de,nhe->nh", x, second_u, x)
    own = torch.einsum("nhd,nd->nh", x, w_own.double().to(writers.device))
    return (own - mean) / (second - mean**2).clamp_min(1e-300).sqrt()


BATCH = 8  # prompts per forward of :func:`context_copy_mass`


@torch.no_grad()
def context_copy_mass(lm: LoadedModel, encodings: Sequence[Encoded]) -> list[float]:
    """Per prompt, the mean over positions i of the probability the model puts on tokens seen
    at positions ``0..i`` other than the true next token: the naive copying that copy
    suppression counters (McDougall et al.: ablating L10H7 makes GPT-2 repeat in-context tokens,
    "All's fair in love and love"). Right-padded batches of :data:`BATCH` prompts."""
    out: list[float] = []
    for first in range(0, len(encodings), BATCH):
        chunk = list(encodings[first : first + BATCH])
        ids = right_pad([enc.input_ids for enc in chunk], pad_id(lm.tokenizer))
        with kernel_errors_translated("forward"):
            logits = lm.model(input_ids=ids.to(lm.device), use_cache=False).logits
        for row, enc in enumerate(chunk):
            n = enc.n_tokens
            if n < 2:
                out.append(float("nan"))
                continue
            probs = torch.softmax(logits[row, : n - 1].double(), -1)  # (n-1, V)
            seen = torch.zeros_like(probs)
            seen[torch.arange(n - 1), ids[row, : n - 1].to(probs.device)] = 1.0
            seen = (seen.cumsum(0) > 0).double()
            seen[torch.arange(n - 1), ids[row, 1:n].to(probs.device)] = 0.0  # the true next
            out.append(float((probs * seen).sum(-1).mean()))
    return out


@register_analyzer
class CopySuppressionAnalyzer(Analyzer):
    """Copy-suppression heads (McDougall et al. 2023, "Copy Suppression: Comprehensively
    Understanding an Attention Head", arXiv:2310.04625; reference code
    callummcdougall/SERI-MATS-2023-Streamlit-pages, ``get_full_ov_circuit_for_head`` /
    ``ov_head_impact``).

    ``score``: the share of tokens s whose own logit is *the most suppressed* one in the head's
    full OV circuit row ``OV[s, :] = W_U g_f (W_O^h W_V^{g(h)} norm_l(W_EE[s]))`` over the whole
    vocabulary (strictly: ties count against it), ``W_EE`` the effective embedding
    (``embedding``, default ``"block0"``: block 0 run on the token alone, the reference's
    ``model.blocks[0](W_E[:, None, :])``). SmolLM2/Llama: RMSNorm (no centring; its weight is
    applied, its per-row scale only rescales a row and changes no rank), GQA (a query head's OV
    uses its KV group's ``W_V``), tied unembedding; see :mod:`workbench.analyzers.ov_circuit`.
    ``score_lo``/``score_hi``: bootstrap over tokens; ``attrs["chance"]`` = 1 / vocabulary.
    Items: ``n_tokens`` vocabulary tokens drawn uniformly (seeded, special tokens out; the
    paper uses all of them), or, with ``prompts``, the distinct tokens of the prompts.

    Evidence columns: ``bottom_10`` (own token among the 10 most suppressed, the reference's
    other statistic), ``self_z`` (mean z-score of the own logit within its row, population
    standard deviation: negative = suppression, positive = copying). Weights only: no
    attention maps, no forward over text besides the one-token passes.

    Causal check: on ``causal_prompts`` corpus windows (or the given prompts), the probability
    the model puts on earlier context tokens other than the true next one
    (:func:`context_copy_mass`) with the top-k heads vs k random same-layer heads
    zero-ablated (``draws`` random sets): ablating copy suppressors should raise it.
    """

    name = "copy_suppression"
    summary = "copy suppression (McDougall et al.): OV circuit most suppresses the attended token"
    quick_params = QUICK
    checks: ClassVar[Mapping[str, Check]] = {
        "n_tokens": count(1),
        "embedding": one_of(*EMBEDDINGS),
        "causal_prompts": count(1),
    }

    def run(
        self,
        lm: LoadedModel,
        prompts=None,
        *,
        progress: Progress = True,
        n_tokens: int = N_TOKENS,
        embedding: str = "block0",
        prompt_tokens: int = 64,
        causal: bool = True,
        top_k: int = 5,
        draws: int = CHEAP_DRAWS,
        causal_prompts: int = CAUSAL_PROMPTS,
        seed: int = 0,
        quick: bool = False,
    ) -> pd.DataFrame:
        """``prompts``: score the distinct tokens of these prompts instead of a vocabulary
        sample (they are also the causal check's prompts). ``quick``: :data:`QUICK`."""
        items = as_items(prompts)
        encodings = [lm.encode(item["prompt"]) for item in items]  # checked before any work
        token_ids = prompt_tokens_of(encodings) if items else vocabulary_sample(lm, n_tokens, seed)
        if not token_ids:
            raise AnalyzerError(f"{self.name}: no token to score")
        most, bottom, self_z, scan = copy_suppression_items(lm, token_ids, embedding, progress)
        require_done(scan, self.name)
        score = most.mean(0)
        attrs: dict[str, Any] = {
            "analyzer": self.name,
            "definition": (
                "share of tokens s with OV[s, s] < OV[s, t] for every t != s, OV = full OV "
                "circuit W_U g_f W_O^h W_V^g norm_l(W_EE) (McDougall et al. 2023)"
            ),
            "params": {
                "n_tokens": len(token_ids),
                "embedding": embedding,
                "tokens": "prompt tokens" if items else "vocabulary sample",
                "causal_prompts": causal_prompts,
            },
            "chance": 1.0 / float(unembedding_weight(lm).shape[0]),
            "prompts_total": len(token_ids),
            "prompts_used": len(token_ids),
            "layers_done": scan.done,
            "interrupted": scan.interrupted,
            "seconds": round(scan.seconds, 3),
        }
        evidence = {"bottom_10": bottom.mean(0), "self_z": self_z.mean(0)}
        df = head_frame(lm, score, evidence, attrs, per_item=most)
        if causal and not scan.interrupted:
            used = encodings or [
                lm.encode(text) for text in corpus_windows(lm, causal_prompts, prompt_tokens)
            ]
            used = used[:causal_prompts]
            df.attrs["causal"] = causal_evidence(
                lm,
                top_heads(df, top_k),
                lambda m: context_copy_mass(m, used),
                metric_name=(
                    f"probability on earlier context tokens other than the next, {len(used)} "
                    "prompts"
                ),
                k=top_k,
                draws=draws,
                seed=seed,
                mode="zero",
                higher_is_better=False,
            )
        return df
