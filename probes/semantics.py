"""What an attention call means beyond ``softmax(q k^T * scale + mask) v``, read from the keyword
arguments transformers passes to the registered attention function.

transformers 5 hands every attention function ``(module, query, key, value, attention_mask,
dropout, scaling, is_causal, **kwargs)``; the keyword arguments carry the architecture's own
attention semantics. Each keyword is either modelled by the kernels (:data:`MODELLED_KEYWORDS`),
known to leave attention unchanged (:data:`INERT_KEYWORDS`), or refused with a
:class:`AttentionKeywordError` naming the architecture and the keyword: never silently ignored.

Modelled semantics (the kernels' definitions, :func:`kernels.attention`):

* ``softcap`` (Gemma 2 ``attn_logit_softcapping``): scores ``c * tanh(s / c)``.
* ``sliding_window`` (Gemma 2/3, gpt-oss, Mistral, Starcoder2, Cohere2 sliding layers): key ``j``
  visible from the query at absolute position ``pos`` only when ``pos - w < j``.
* ``s_aux`` (gpt-oss ``sinks``): one learned logit per head joining every row's softmax.

:func:`workbench_mask` is the mask builder registered next to the attention function: it is
transformers' SDPA mask builder, except that a plain sliding-window causal mask over an
unpadded batch is not built at all (the kernels compute the window as a band, so no L x L
tensor exists for it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers.masking_utils import causal_mask_function, prepare_padding_mask, sdpa_mask

from probes.errors import ProbeError

#: transformers' keyword -> the :func:`kernels.attention` argument that models it.
MODELLED_KEYWORDS: dict[str, str] = {
    "softcap": "softcap",
    "sliding_window": "window",
    "s_aux": "sinks",
    "sinks": "sinks",
}

#: Keywords transformers passes that do not change the attention computation (position and
#: cache bookkeeping of the module, router logging of MoE blocks).
INERT_KEYWORDS = frozenset(
    {"position_ids", "use_cache", "output_router_logits", "cache_position", "output_attentions"}
)


class AttentionKeywordError(ProbeError):
    """An architecture passes an attention keyword the workbench kernels do not model."""


@dataclass(frozen=True)
class AttentionSemantics:
    """The modelled extras of one attention call (None = absent).

    Attributes:
        softcap: attention-logit softcap ``c``.
        window: sliding window ``w`` (this layer is a sliding layer).
        sinks: (H,) learned sink logits.
    """

    softcap: float | None = None
    window: int | None = None
    sinks: Tensor | None = None

    @property
    def sdpa_exact(self) -> bool:
        """Whether transformers' SDPA function computes this call exactly given its mask: it has
        no softcap and no sink term, and it sees a window only through the mask."""
        return self.softcap is None and self.sinks is None

    def kernel_arguments(self) -> dict[str, Any]:
        """Keyword arguments of :func:`kernels.attention` for these semantics."""
        return {"softcap": self.softcap, "window": self.window, "sinks": self.sinks}


def _architecture(module: nn.Module) -> str:
    config = getattr(module, "config", None)
    return str(getattr(config, "model_type", None) or type(module).__name__)


def semantics_of(module: nn.Module, kwargs: dict[str, Any]) -> AttentionSemantics:
    """Read the modelled keywords of one call; refuse any keyword neither modelled nor inert.

    Raises:
        AttentionKeywordError: a keyword with a value (not None) that the kernels do not model.
    """
    unknown = [
        name
        for name, value in kwargs.items()
        if value is not None and name not in MODELLED_KEYWORDS and name not in INERT_KEYWORDS
    ]
    if unknown:
        raise AttentionKeywordError(
            f"{_architecture(module)} passes the attention keyword(s) {unknown} (layer "
            f"{getattr(module, 'layer_idx', '?')}), which the workbench kernels do not model; "
            f"modelled: {sorted(MODELLED_KEYWORDS)}, known to change nothing: "
            f"{sorted(INERT_KEYWORDS)}. Running it anyway could give silently wrong attention; "
            "add the semantics to kernels.attention and probes.semantics first"
        )
    values = {MODELLED_KEYWORDS[k]: v for k, v in kwargs.items() if k in MODELLED_KEYWORDS}
    softcap, window, sinks = values.get("softcap"), values.get("window"), values.get("sinks")
    return AttentionSemantics(
        softcap=None if softcap is None else float(softcap),
        window=None if window is None else int(window),
        sinks=sinks,
    )


def _unpadded(attention_mask: Tensor | None, kv_length: int, kv_offset: int) -> bool:
    padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
    return padding is None or bool(padding.all())


def workbench_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function=causal_mask_function,
    attention_mask: Tensor | None = None,
    local_size: int | None = None,
    allow_is_causal_skip: bool = True,
    use_vmap: bool = False,
    **kwargs: Any,
) -> Tensor | None:
    """transformers' ``sdpa_mask``, but a plain sliding-window causal mask is never built.

    When transformers asks for a sliding-window causal mask (``local_size`` set) that is the
    standard one (skips allowed, no custom mask functions), over an unpadded batch whose last
    query is its last key, this returns None: the attention function then receives
    ``sliding_window`` and the kernels apply it as a band. Every other mask (full layers,
    padding, packed or custom masks, static caches) is ``sdpa_mask``'s.
    """
    if (
        local_size is not None
        and allow_is_causal_skip
        and not use_vmap
        and isinstance(q_offset, int)
        and isinstance(kv_offset, int)
        and q_offset + q_length == kv_offset + kv_length
        and _unpadded(attention_mask, kv_length, kv_offset)
    ):
        return None
    return sdpa_mask(
        batch_size,
        q_length,
        kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        mask_function=mask_function,
        attention_mask=attention_mask,
        local_size=local_size,
        allow_is_causal_skip=allow_is_causal_skip,
        use_vmap=use_vmap,
        **kwargs,
    )


def eager_probabilities(scores: Tensor, visible: Tensor, sinks: Tensor | None) -> Tensor:
    """Softmax of ``scores`` (B, H, Lq, Lk) over the ``visible`` keys, with the learned sink
    logits (H,) as an extra column that takes its share of the mass and is then dropped (the
    gpt-oss rule); rows that see nothing get 0. Autograd-friendly (used for gradients)."""
    scores = scores.masked_fill(~visible, float("-inf"))
    if sinks is None:
        return torch.softmax(scores, dim=-1).nan_to_num(0.0)
    sink = sinks.to(scores.dtype).view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
    probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)
    return probs[..., :-1]
