"""What a caller asks the kernels for (:class:`StatsRequest`) and what it gets back.

All statistics are defined on the attention probabilities ``A[b, h, i, j]`` of query row ``i``
for key ``j`` that the model really uses, *before* any ``head_scale`` is applied to the head's
output:

- score ``s_ij = (q_i . k_j) * scale``; with a ``softcap`` ``c``: ``s_ij = c * tanh(s_ij / c)``
  (attention-logit softcapping, Gemma Team 2024, "Gemma 2: Improving Open Language Models at a
  Practical Size"; transformers' ``gemma2.modeling_gemma2.eager_attention_forward``); then
  ``+ score_bias[b, h, j]`` (so PASTA's ``log alpha`` multiplies the capped probability);
- hidden cells are ``-inf``: causal (key after the query's absolute position
  ``pos_i = Lk - Lq + i``), ``mask`` False, or outside a sliding ``window`` ``w``: key ``j`` is
  visible only when ``pos_i - w < j`` (transformers' ``masking_utils.sliding_window_overlay``,
  ``kv_idx > q_idx - sliding_window``);
- with learned ``sinks`` (one logit per query head, gpt-oss: OpenAI 2025, "gpt-oss-120b &
  gpt-oss-20b Model Card"; transformers' ``gpt_oss.modeling_gpt_oss.eager_attention_forward``)
  the sink joins every row's softmax as an extra column with no value:
  ``A_ij = exp(s_ij) / (sum_j exp(s_ij) + exp(sink_h))`` and the sink takes
  ``sink_mass_i = exp(sink_h) / (same denominator)``. Rows then sum to ``1 - sink_mass``; every
  key statistic is over the real keys, the entropy includes the sink column.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kernels.errors import KernelInputError


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class MapRequest:
    """Full attention maps for a few query heads, optionally for a window of query rows.

    heads: query-head indices (0-based, query heads also under GQA); the returned maps keep this
        order, duplicates allowed.
    query_window: ``(start, end)`` query rows (indices into ``Lq``, end exclusive);
        ``None`` = all rows.
    """

    heads: tuple[int, ...]
    query_window: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        heads = tuple(self.heads)
        if not heads:
            raise KernelInputError("MapRequest.heads is empty; ask for at least one head")
        if not all(_is_int(h) and h >= 0 for h in heads):
            raise KernelInputError(f"MapRequest.heads must be non-negative ints, got {heads!r}")
        object.__setattr__(self, "heads", heads)
        if self.query_window is not None:
            w = tuple(self.query_window)
            if len(w) != 2 or not all(_is_int(x) for x in w) or not 0 <= w[0] < w[1]:
                raise KernelInputError(
                    f"MapRequest.query_window must be (start, end) ints with 0 <= start < end, "
                    f"got {self.query_window!r}"
                )
            object.__setattr__(self, "query_window", w)


@dataclass(frozen=True)
class StatsRequest:
    """Which head statistics to compute alongside the attention output.

    received: attention received per key, ``sum_i A[i, j]`` -> ``(B, H, Lk)``, and the sink
        score ``received[j] / n_j`` where ``n_j`` is the number of query rows that can see key
        ``j`` (0 where none can). For a causal square map ``n_j = T - j``: the sink metric of
        Gu et al., "When Attention Sink Emerges in Language Models" (2024).
        Under a sliding window ``n_j`` counts only the rows whose window contains ``j``.
    entropy: per-query entropy ``-sum_j A log A`` in nats -> ``(B, H, Lq)``; with sinks it
        includes the sink column, ``- sink_mass * log(sink_mass)``.
    argmax: per-query most-attended key (int64, first index among exact ties) and its
        probability -> ``(B, H, Lq)`` each.
    spans: key spans ``[start, end)``; per-query attention mass on each -> ``(B, H, Lq, S)``.
    distance: mean attention distance ``sum_j A[i, j] (pos_i - j)`` where
        ``pos_i = Lk - Lq + i`` is the absolute position of query ``i`` -> ``(B, H, Lq)``.
    pooled_block: ``b`` -> block-pooled map ``(B, H, ceil(Lq/b), ceil(Lk/b))``. Tile ``(I, J)``
        covers rows ``[I*b, min((I+1)*b, Lq))`` and keys ``[J*b, min((J+1)*b, Lk))``; its value
        is the mean of ``A`` over the cells it actually contains (edge tiles are smaller and
        are averaged over their own cell count; masked cells count as cells holding 0).
    maps: full maps ``(B, len(heads), window_len, Lk)`` for the requested heads/window only.
    """

    received: bool = False
    entropy: bool = False
    argmax: bool = False
    spans: tuple[tuple[int, int], ...] = ()
    distance: bool = False
    pooled_block: int | None = None
    maps: MapRequest | None = None

    def __post_init__(self) -> None:
        spans = tuple(tuple(s) for s in self.spans)
        for s in spans:
            if len(s) != 2 or not all(_is_int(x) for x in s) or not 0 <= s[0] < s[1]:
                raise KernelInputError(
                    f"each span must be (start, end) ints with 0 <= start < end, got {s!r}"
                )
        object.__setattr__(self, "spans", spans)
        b = self.pooled_block
        if b is not None and (not _is_int(b) or b < 1):
            raise KernelInputError(f"pooled_block must be an int >= 1 or None, got {b!r}")
        if self.maps is not None and not isinstance(self.maps, MapRequest):
            raise KernelInputError(f"maps must be a MapRequest or None, got {self.maps!r}")

    @classmethod
    def all(cls, pooled_block: int | None = 64) -> StatsRequest:
        """Every statistic except spans and maps (which need arguments)."""
        return cls(
            received=True, entropy=True, argmax=True, distance=True, pooled_block=pooled_block
        )

    @property
    def row_stats(self) -> bool:
        """Whether any statistic needs every query row (everything except maps)."""
        return (
            self.received
            or self.entropy
            or self.argmax
            or bool(self.spans)
            or self.distance
            or self.pooled_block is not None
        )

    @property
    def any(self) -> bool:
        """Whether anything beyond output and LSE is requested."""
        return self.row_stats or self.maps is not None


FLOAT_STATISTICS = (
    "received",
    "sink",
    "entropy",
    "argmax_prob",
    "span_mass",
    "distance",
    "pooled",
    "maps",
    "sink_mass",
)
"""The float statistics fields of :class:`AttentionResult` (float32, or float64 for float64
inputs); ``argmax`` is the one integer field."""


@dataclass(kw_only=True)
class AttentionResult:
    """Output of :func:`kernels.attention`. Statistics not requested are ``None``.

    output: ``(B, Lq, H, D)`` contiguous, in q's dtype (the layout transformers' attention
        functions return), already multiplied by ``head_scale``; 0 on rows with no visible key.
    lse: ``(B, H, Lq)`` log-sum-exp of the (capped,) scaled, biased, masked scores, the sink
        logit included (``A = exp(s - lse)``); ``-inf`` on rows with no visible key and no
        sink. float32 (float64 for float64 inputs), as are all float statistics.
    sink_mass: ``(B, H, Lq)`` the probability the learned sink takes from each query,
        ``exp(sink_h - lse)`` (1 on rows with no visible key); returned whenever ``sinks`` is
        given, else None.
    received, sink: ``(B, H, Lk)``. entropy, argmax (int64), argmax_prob, distance:
        ``(B, H, Lq)``. span_mass: ``(B, H, Lq, S)``. pooled: ``(B, H, ceil(Lq/b), ceil(Lk/b))``.
        maps: ``(B, len(heads), window_len, Lk)``. See :class:`StatsRequest` for definitions.
    backend: which implementation ran: "torch", "triton" or "reference".
    """

    output: Tensor
    lse: Tensor
    received: Tensor | None = None
    sink: Tensor | None = None
    entropy: Tensor | None = None
    argmax: Tensor | None = None
    argmax_prob: Tensor | None = None
    span_mass: Tensor | None = None
    distance: Tensor | None = None
    pooled: Tensor | None = None
    maps: Tensor | None = None
    sink_mass: Tensor | None = None
    backend: str = ""
