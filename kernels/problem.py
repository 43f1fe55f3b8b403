"""Input validation: turns the arguments of :func:`kernels.attention` into a checked
:class:`Problem` (shapes, normalised mask / bias / head scale), or raises
:class:`~kernels.errors.KernelInputError` naming the bad argument and its value."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from kernels.errors import KernelInputError
from kernels.requests import StatsRequest

BACKENDS = ("auto", "torch", "triton", "reference")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

# Scores below this are treated as "no attention"; score_bias is clamped to it so that a
# masked score (-inf or the dtype minimum) always stays strictly below every visible one.
MIN_BIAS = -1e30


@dataclass(frozen=True)
class Problem:
    """A validated attention call. Shapes: q (B, H, Lq, D), k and v (B, Hkv, Lk, D).

    mask: bool (Bm, Hm, Lqm, Lk) with Bm in {1, B}, Hm in {1, H}, Lqm in {1, Lq} (a view; a
        broadcast key dimension is expanded with stride 0), or None.
    score_bias: (Bb, H, Lk) with Bb in {1, B}, same device as q, clamped to >= MIN_BIAS.
    head_scale: (H,) on q's device, or None.
    softcap: attention-logit softcap ``c`` (scores become ``c * tanh(s / c)``), or None.
    window: sliding window ``w``: key j is visible to the row at position ``pos`` only when
        ``pos - w < j``; or None (also when ``w >= Lk``: such a window hides nothing).
    sinks: (H,) learned sink logits (float32, float64 for float64 inputs) on q's device, or None.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    scale: float
    causal: bool
    mask: Tensor | None
    score_bias: Tensor | None
    head_scale: Tensor | None
    stats: StatsRequest
    softcap: float | None = None
    window: int | None = None
    sinks: Tensor | None = None

    @property
    def B(self) -> int:
        return self.q.shape[0]

    @property
    def H(self) -> int:
        return self.q.shape[1]

    @property
    def Hkv(self) -> int:
        return self.k.shape[1]

    @property
    def Lq(self) -> int:
        return self.q.shape[2]

    @property
    def Lk(self) -> int:
        return self.k.shape[2]

    @property
    def D(self) -> int:
        return self.q.shape[3]

    @property
    def group(self) -> int:
        """Query heads per KV head (GQA group size)."""
        return self.H // self.Hkv

    @property
    def offset(self) -> int:
        """Absolute position of query row 0: ``Lk - Lq`` (row i sits at ``offset + i``)."""
        return self.Lk - self.Lq

    @property
    def stat_dtype(self) -> torch.dtype:
        """dtype of LSE and float statistics: float64 for float64 inputs, else float32."""
        return torch.float64 if self.q.dtype == torch.float64 else torch.float32

    def band_start(self, i0: int) -> int:
        """First key a block whose first query row is ``i0`` can see (0 without a window)."""
        if self.window is None:
            return 0
        return max(0, self.offset + i0 - self.window + 1)

    def band_end(self, i1: int) -> int:
        """One past the last key a block ending before query row ``i1`` can see."""
        return min(self.Lk, self.offset + i1) if self.causal else self.Lk


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_qkv(q: object, k: object, v: object) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise KernelInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise KernelInputError(
                f"{name} must be 4-D ({'B, H, Lq, D' if name == 'q' else 'B, Hkv, Lk, D'}), "
                f"got shape {_shape(t)}"
            )
        if t.dtype not in FLOAT_DTYPES:
            raise KernelInputError(
                f"{name} has unsupported dtype {t.dtype}; use float32, float16, bfloat16 "
                "(or float64 on the torch/reference backends)"
            )
    assert isinstance(q, Tensor) and isinstance(k, Tensor) and isinstance(v, Tensor)
    if not (q.dtype == k.dtype == v.dtype):
        raise KernelInputError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise KernelInputError(
            f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}"
        )
    if k.shape != v.shape:
        raise KernelInputError(f"k and v shapes differ: k {_shape(k)} vs v {_shape(v)}")
    if q.shape[0] != k.shape[0]:
        raise KernelInputError(f"batch mismatch: q has B={q.shape[0]}, k/v have B={k.shape[0]}")
    if q.shape[3] != k.shape[3]:
        raise KernelInputError(f"head dim mismatch: q has D={q.shape[3]}, k/v have D={k.shape[3]}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise KernelInputError(
            f"query heads H={q.shape[1]} must be a multiple of KV heads Hkv={k.shape[1]}"
        )
    if min(q.shape) == 0 or k.shape[2] == 0:
        raise KernelInputError(f"empty input: q {_shape(q)}, k {_shape(k)}")


def _check_mask(mask: object, B: int, H: int, Lq: int, Lk: int, device: torch.device) -> Tensor:
    if not isinstance(mask, Tensor):
        raise KernelInputError(f"mask must be a bool tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise KernelInputError(
            f"mask must be a bool tensor (True = may attend), got dtype {mask.dtype}; "
            "convert an additive float mask with `mask == 0`"
        )
    if mask.dim() > 4:
        raise KernelInputError(f"mask must have at most 4 dims, got shape {_shape(mask)}")
    if mask.device != device:
        raise KernelInputError(f"mask is on {mask.device}, q on {device}")
    m = mask.reshape((1,) * (4 - mask.dim()) + _shape(mask))
    want = (B, H, Lq, Lk)
    if any(s not in (1, w) for s, w in zip(m.shape, want, strict=True)):
        raise KernelInputError(
            f"mask shape {_shape(mask)} is not broadcastable to (B, 1 or H, Lq, Lk) = "
            f"({B}, 1 or {H}, {Lq}, {Lk})"
        )
    if m.shape[3] != Lk:
        m = m.expand(m.shape[0], m.shape[1], m.shape[2], Lk)
    return m


def _check_bias(bias: object, B: int, H: int, Lk: int, q: Tensor) -> Tensor:
    if not isinstance(bias, Tensor) or not bias.is_floating_point():
        raise KernelInputError(
            f"score_bias must be a floating tensor of shape (B or 1, H, Lk), got {bias!r:.80}"
        )
    if bias.dim() != 3 or bias.shape[0] not in (1, B) or tuple(bias.shape[1:]) != (H, Lk):
        raise KernelInputError(
            f"score_bias must have shape (B or 1, H, Lk) = ({B} or 1, {H}, {Lk}), "
            f"got {_shape(bias)}"
        )
    if bias.device != q.device:
        raise KernelInputError(f"score_bias is on {bias.device}, q on {q.device}")
    if torch.isnan(bias).any() or (bias == math.inf).any():
        raise KernelInputError(
            "score_bias contains NaN or +inf; it must be finite (use mask to forbid keys)"
        )
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    return bias.to(dt).clamp(min=MIN_BIAS)


def _check_head_scale(hs: object, H: int, q: Tensor) -> Tensor:
    if not isinstance(hs, Tensor) or not hs.is_floating_point():
        raise KernelInputError(
            f"head_scale must be a floating tensor of shape (H,), got {hs!r:.80}"
        )
    if _shape(hs) != (H,):
        raise KernelInputError(f"head_scale must have shape (H,) = ({H},), got {_shape(hs)}")
    if hs.device != q.device:
        raise KernelInputError(f"head_scale is on {hs.device}, q on {q.device}")
    return hs


def _check_softcap(softcap: object) -> float:
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
        raise KernelInputError(f"softcap must be a finite number > 0 or None, got {softcap!r:.80}")
    if not (math.isfinite(softcap) and softcap > 0):
        raise KernelInputError(f"softcap must be a finite number > 0 or None, got {softcap!r}")
    return float(softcap)


def _check_window(window: object) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise KernelInputError(
            f"window must be an int >= 1 (keys j with pos - window < j) or None, got {window!r:.80}"
        )
    return window


def _check_sinks(sinks: object, H: int, q: Tensor) -> Tensor:
    if not isinstance(sinks, Tensor) or not sinks.is_floating_point():
        raise KernelInputError(
            f"sinks must be a floating tensor of shape (H,) = ({H},) or None, got {sinks!r:.80}"
        )
    if _shape(sinks) != (H,):
        raise KernelInputError(f"sinks must have shape (H,) = ({H},), got {_shape(sinks)}")
    if sinks.device != q.device:
        raise KernelInputError(f"sinks is on {sinks.device}, q on {q.device}")
    if not bool(torch.isfinite(sinks).all()):
        raise KernelInputError(f"sinks must be finite, got {sinks.tolist()!r:.80}")
    return sinks.detach().to(torch.float64 if q.dtype == torch.float64 else torch.float32)


def _check_stats(stats: object, H: int, Lq: int, Lk: int) -> StatsRequest:
    if stats is None:
        return StatsRequest()
    if not isinstance(stats, StatsRequest):
        raise KernelInputError(f"stats must be a StatsRequest or None, got {stats!r:.80}")
    for s in stats.spans:
        if s[1] > Lk:
            raise KernelInputError(f"span {s} reaches past the keys: must lie in [0, Lk={Lk}]")
    if stats.maps is not None:
        bad = [h for h in stats.maps.heads if h >= H]
        if bad:
            raise KernelInputError(f"map heads {bad} out of range: there are H={H} query heads")
        w = stats.maps.query_window
        if w is not None and w[1] > Lq:
            raise KernelInputError(f"map query_window {w} reaches past the queries: Lq={Lq}")
    return stats


def build_problem(
    q: object,
    k: object,
    v: object,
    *,
    scale: float | None,
    causal: bool,
    mask: object,
    score_bias: object,
    head_scale: object,
    stats: object,
    softcap: object = None,
    window: object = None,
    sinks: object = None,
) -> Problem:
    """Validate every argument of :func:`kernels.attention`; see there for meanings."""
    _check_qkv(q, k, v)
    assert isinstance(q, Tensor) and isinstance(k, Tensor) and isinstance(v, Tensor)
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    if causal and Lq > Lk:
        raise KernelInputError(
            f"causal attention needs Lq <= Lk (queries are the last Lq positions), "
            f"got Lq={Lq} > Lk={Lk}"
        )
    if scale is None:
        scale = D**-0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise KernelInputError(f"scale must be a finite number or None, got {scale!r}")
    m = None if mask is None else _check_mask(mask, B, H, Lq, Lk, q.device)
    bias = None if score_bias is None else _check_bias(score_bias, B, H, Lk, q)
    hs = None if head_scale is None else _check_head_scale(head_scale, H, q)
    req = _check_stats(stats, H, Lq, Lk)
    cap = None if softcap is None else _check_softcap(softcap)
    win = None if window is None else _check_window(window)
    if win is not None and win >= Lk:  # every key is within every row's window: no band
        win = None
    sk = None if sinks is None else _check_sinks(sinks, H, q)
    return Problem(
        q=q,
        k=k,
        v=v,
        scale=float(scale),
        causal=bool(causal),
        mask=m,
        score_bias=bias,
        head_scale=hs,
        stats=req,
        softcap=cap,
        window=win,
        sinks=sk,
    )
