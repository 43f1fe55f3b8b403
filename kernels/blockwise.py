"""The PyTorch path: exact attention output, LSE and head statistics in one blockwise sweep.

Runs on any device with plain torch ops. Query rows are processed in blocks of ``bq`` rows;
each block is scored against *all* the keys it can see (``bq x Lk`` per head, never
``Lq x Lk``), so every row's softmax is final inside its block: one sweep yields the output
(``A @ V``), the LSE and every statistic, column sums included, with no second pass over the
keys. GQA needs no copies: the ``G`` query heads of a KV group are stacked as ``G * bq`` rows
of one matmul against their shared keys. A causal block stops at its last visible key.

Without row statistics on the CPU, the output comes from PyTorch's fused flash op instead
(:mod:`kernels.flash_cpu`), and a maps-only request sweeps just the window's rows.

Per block (all heads at once): ``s = q k^T * scale (+ bias)``; hidden cells get the dtype's
most negative finite value (so that ``0 * s`` stays 0); ``a = softmax(s)`` (one fused op, which,
unlike ``torch.exp``, stays fast when scores underflow); row max (argmax) and
``lse = s[argmax] - log a[argmax]``; ``out = a @ v``; entropy ``lse - <a, s>``; distances and
span masses as one small matmul ``a @ W``; column sums and pooled tiles as a matmul with a
row-tile indicator. Buffers are allocated once per call and reused by every block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from kernels.flash_cpu import flash_applicable, flash_forward
from kernels.problem import Problem
from kernels.requests import AttentionResult

# Elements (heads x rows x keys) per block when the caller gives no block size. Measured on
# 2 CPU cores at H=9, D=64: 96-128 rows at 4,096 keys and 64-128 rows at 1,024 keys are the
# fastest (fewer, larger torch ops against cache misses); each of the two block buffers then
# holds 16 MiB of float32 at most (19 MiB at the 16-row floor for 32,768 keys).
TARGET_BLOCK_ELEMENTS = 1 << 22
MIN_BLOCK_ROWS = 16
MAX_BLOCK_ROWS = 128


def choose_block_rows(p: Problem, block_size: int | None) -> int:
    """Query rows per block: ``block_size`` if given, else sized to ~TARGET_BLOCK_ELEMENTS."""
    if block_size is not None:
        return max(1, min(block_size, p.Lq))
    rows = TARGET_BLOCK_ELEMENTS // max(1, p.B * p.H * p.Lk)
    rows = max(MIN_BLOCK_ROWS, min(MAX_BLOCK_ROWS, rows))
    rows -= rows % 16
    return min(rows, p.Lq)


def key_visible_counts(p: Problem) -> Tensor:
    """Number of query rows that can see each key, without a mask: (Lk,) float."""
    j = torch.arange(p.Lk, device=p.q.device)
    if not p.causal:
        return torch.full((p.Lk,), float(p.Lq), device=p.q.device, dtype=p.stat_dtype)
    return (p.Lq - (j - p.offset).clamp(min=0)).clamp(min=0).to(p.stat_dtype)


def pooled_cell_counts(
    lq: int, lk: int, b: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Cells per pooled tile, (ceil(lq/b), ceil(lk/b)): b*b except for edge tiles."""
    nr, nc = math.ceil(lq / b), math.ceil(lk / b)
    rows = torch.full((nr,), float(b), device=device, dtype=dtype)
    cols = torch.full((nc,), float(b), device=device, dtype=dtype)
    rows[-1] = lq - (nr - 1) * b
    cols[-1] = lk - (nc - 1) * b
    return rows[:, None] * cols[None, :]


@dataclass
class _Outputs:
    """Result buffers filled block by block (None when not requested)."""

    out: Tensor | None
    lse: Tensor | None
    received: Tensor | None = None
    count: Tensor | None = None
    entropy: Tensor | None = None
    argmax: Tensor | None = None
    argmax_prob: Tensor | None = None
    span_mass: Tensor | None = None
    distance: Tensor | None = None
    pooled: Tensor | None = None
    maps: Tensor | None = None


class _Sweep:
    """One pass over query blocks ``[r0, r1)``; see the module docstring."""

    def __init__(
        self,
        p: Problem,
        bq: int,
        want_output: bool,
        row_stats: bool,
    ) -> None:
        self.p = p
        self.bq = bq
        self.row_stats = row_stats
        dev = p.q.device
        self.cdt = torch.float64 if p.q.dtype == torch.float64 else torch.float32
        self.neg = torch.finfo(self.cdt).min
        self.int_view = torch.int64 if self.cdt == torch.float64 else torch.int32
        self.k = p.k.to(self.cdt)
        self.v = p.v.to(self.cdt)
        self.kt = self.k.transpose(-1, -2)
        self.q5 = p.q.unflatten(1, (p.Hkv, p.group))  # (B, Hkv, G, Lq, D), a view
        n_rows = p.B * p.H * bq
        self.qbuf = torch.empty(n_rows * p.D, dtype=self.cdt, device=dev)
        self.sbuf = torch.empty(n_rows * p.Lk, dtype=self.cdt, device=dev)
        self.pbuf = torch.empty(n_rows * p.Lk, dtype=self.cdt, device=dev)
        self.tri = torch.ones(bq, bq, dtype=torch.bool, device=dev).triu(1)
        self.negtri = torch.zeros(bq, bq, dtype=self.cdt, device=dev).masked_fill_(
            self.tri, self.neg
        )
        self.bias5 = None
        if p.score_bias is not None:
            self.bias5 = p.score_bias.to(self.cdt).unflatten(1, (p.Hkv, p.group)).unsqueeze(3)
        self.mask5 = None
        if p.mask is not None:
            m = p.mask
            self.mask5 = m.unflatten(1, (p.Hkv, p.group)) if m.shape[1] == p.H else m.unsqueeze(2)
        self.jpos = torch.arange(max(p.Lk, bq), dtype=self.cdt, device=dev)
        self.o = self._allocate(want_output)
        self.wcols = self._extra_columns()

    # -- setup ---------------------------------------------------------------------------
    def _allocate(self, want_output: bool) -> _Outputs:
        p, st, sd, dev = self.p, self.p.stats, self.p.stat_dtype, self.p.q.device
        bhl = (p.B, p.H, p.Lq)
        o = _Outputs(
            out=torch.empty(p.B, p.Lq, p.H, p.D, dtype=p.q.dtype, device=dev)
            if want_output
            else None,
            lse=torch.empty(bhl, dtype=sd, device=dev) if want_output else None,
        )
        if self.row_stats:
            if st.received:
                o.received = torch.zeros(p.B, p.H, p.Lk, dtype=sd, device=dev)
                if p.mask is not None:
                    o.count = torch.zeros(
                        p.mask.shape[0], p.mask.shape[1], p.Lk, dtype=sd, device=dev
                    )
            if st.entropy:
                o.entropy = torch.empty(bhl, dtype=sd, device=dev)
            if st.argmax:
                o.argmax = torch.empty(bhl, dtype=torch.int64, device=dev)
                o.argmax_prob = torch.empty(bhl, dtype=sd, device=dev)
            if st.spans:
                o.span_mass = torch.empty(*bhl, len(st.spans), dtype=sd, device=dev)
            if st.distance:
                o.distance = torch.empty(bhl, dtype=sd, device=dev)
            if st.pooled_block is not None:
                b = st.pooled_block
                o.pooled = torch.zeros(
                    p.B, p.H, math.ceil(p.Lq / b), math.ceil(p.Lk / b), dtype=sd, device=dev
                )
        if st.maps is not None:
            w0, w1 = st.maps.query_window or (0, p.Lq)
            o.maps = torch.zeros(p.B, len(st.maps.heads), w1 - w0, p.Lk, dtype=sd, device=dev)
        return o

    def _extra_columns(self) -> Tensor | None:
        """(Lk, E) weights whose products with P give distances and span masses."""
        p, st = self.p, self.p.stats
        if not self.row_stats or not (st.distance or st.spans):
            return None
        cols = (1 if st.distance else 0) + len(st.spans)
        w = torch.zeros(p.Lk, cols, dtype=self.cdt, device=p.q.device)
        c0 = 1 if st.distance else 0
        for i, (a, b) in enumerate(st.spans):
            w[a:b, c0 + i] = 1.0
        return w

    # -- the sweep -----------------------------------------------------------------------
    def run(self, r0: int, r1: int) -> _Outputs:
        for i0 in range(r0, r1, self.bq):
            self._block(i0, min(r1, i0 + self.bq))
        return self.o

    def _block(self, i0: int, i1: int) -> None:
        p, o = self.p, self.o
        B, Hkv, G, D = p.B, p.Hkv, p.group, p.D
        n = i1 - i0
        kend = min(p.Lk, p.offset + i1) if p.causal else p.Lk
        rows = G * n

        # scores of this block's rows of every head against all visible keys
        qb = self.qbuf[: B * Hkv * rows * D].view(B, Hkv, G, n, D)
        qb.copy_(self.q5[:, :, :, i0:i1])
        qb.mul_(p.scale)
        s = self.sbuf[: B * Hkv * rows * kend].view(B, Hkv, rows, kend)
        torch.matmul(qb.view(B, Hkv, rows, D), self.kt[..., :kend], out=s)
        s5 = s.view(B, Hkv, G, n, kend)
        if self.bias5 is not None:
            s5.add_(self.bias5[..., :kend])
        if p.causal:  # the last n keys form the diagonal square; hide its upper triangle
            s5[..., kend - n : kend].add_(self.negtri[:n, :n])
        mb = None
        if self.mask5 is not None:
            mb = (
                self.mask5[..., :kend]
                if self.mask5.shape[3] == 1
                else self.mask5[..., i0:i1, :kend]
            )
            s5.masked_fill_(~mb, self.neg)

        # probabilities (hidden cells underflow to exactly 0), row max, LSE
        a = self.pbuf[: B * Hkv * rows * kend].view(B, Hkv, rows, kend)
        torch.softmax(s, dim=-1, out=a)
        idx = None
        if self.row_stats and p.stats.argmax:
            # a >= 0, so its bits order like integers; an integer max-with-index is ~30% faster
            bits, idx = a.view(self.int_view).max(dim=-1)
            amax = bits.view(self.cdt)
            m = s.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
        else:
            m, amax = s.amax(dim=-1), a.amax(dim=-1)
        valid = None
        if mb is not None:  # rows that see no key: softmax made them uniform; zero them
            valid = m > self.neg / 2
            if not bool(valid.all()):
                a.mul_(valid.unsqueeze(-1))
            else:
                valid = None
        lse = m - torch.log(amax)  # a[argmax] = exp(m - lse)
        if valid is not None:
            lse = torch.where(valid, lse, -math.inf)

        if o.out is not None:
            self._write_output(a, lse, i0, i1, kend)
        if self.row_stats:
            self._row_stats(s, a, lse, idx, amax, valid, i0, i1, kend)
            self._column_stats(a, i0, i1, kend)
            if o.count is not None:
                assert mb is not None
                vis = mb.expand(*mb.shape[:3], n, kend).clone()
                if p.causal:
                    vis[..., kend - n : kend] &= ~self.tri[:n, :n]
                o.count.view(*mb.shape[:3], p.Lk)[..., :kend] += vis.sum(-2)
        if o.maps is not None:
            self._maps(a, i0, i1, kend)

    def _put(self, dst: Tensor, val: Tensor, i0: int, i1: int) -> None:
        """Write per-row values of shape (B, Hkv, G*n, ...) into dst (B, H, Lq, ...)."""
        p = self.p
        dst.view(p.B, p.Hkv, p.group, p.Lq, *dst.shape[3:])[:, :, :, i0:i1].copy_(
            val.view(p.B, p.Hkv, p.group, i1 - i0, *val.shape[3:])
        )

    def _write_output(self, a: Tensor, lse: Tensor, i0: int, i1: int, kend: int) -> None:
        p, o = self.p, self.o
        B, Hkv, G, D = p.B, p.Hkv, p.group, p.D
        n = i1 - i0
        ob5 = torch.matmul(a, self.v[:, :, :kend]).view(B, Hkv, G, n, D)
        if p.head_scale is not None:
            ob5.mul_(p.head_scale.to(self.cdt).view(1, Hkv, G, 1, 1))
        assert o.out is not None and o.lse is not None
        o.out[:, i0:i1].view(B, n, Hkv, G, D).copy_(ob5.permute(0, 3, 1, 2, 4))
        self._put(o.lse, lse, i0, i1)

    def _row_stats(
        self,
        s: Tensor,
        a: Tensor,
        lse: Tensor,
        idx: Tensor | None,
        amax: Tensor | None,
        valid: Tensor | None,
        i0: int,
        i1: int,
        kend: int,
    ) -> None:
        """Per-row statistics of a block; ``log a = s - lse``."""
        p, o, st = self.p, self.o, self.p.stats
        n = i1 - i0
        if o.entropy is not None:
            # -sum_j a_j log a_j = -sum_j a_j (s_j - lse) = lse - <a, s>   (sum_j a_j = 1)
            s.mul_(a)  # hidden cells: finite minimum * 0 = 0
            ent = lse - s.sum(dim=-1)
            self._put(o.entropy, ent if valid is None else torch.where(valid, ent, 0.0), i0, i1)
        if o.argmax is not None:
            assert idx is not None and amax is not None and o.argmax_prob is not None
            if valid is not None:
                idx = torch.where(valid, idx, 0)
                amax = torch.where(valid, amax, 0.0)
            self._put(o.argmax, idx, i0, i1)
            self._put(o.argmax_prob, amax, i0, i1)
        if self.wcols is not None:
            w = self.wcols[:kend]
            if st.distance:
                torch.sub(self.jpos[:kend], p.offset + i0, out=w[:, 0])
            pw = torch.matmul(a, w)  # (B, Hkv, G*n, E)
            c0 = 0
            if st.distance:
                assert o.distance is not None
                # pos_i - j = (i - i0) - (j - offset - i0): both terms small near the diagonal
                rel = self.jpos[:n].repeat(p.group)
                dist = (rel if valid is None else valid * rel) - pw[..., 0]
                self._put(o.distance, dist, i0, i1)
                c0 = 1
            if st.spans:
                assert o.span_mass is not None
                self._put(o.span_mass, pw[..., c0:], i0, i1)

    def _column_stats(self, a: Tensor, i0: int, i1: int, kend: int) -> None:
        p, o = self.p, self.o
        bh, n = p.B * p.H, i1 - i0
        a3 = a.view(bh, n, kend)
        if o.pooled is not None:
            b = p.stats.pooled_block
            assert b is not None
            t0, t1 = i0 // b, (i1 - 1) // b + 1
            tile_of_row = torch.arange(i0, i1, device=a.device) // b - t0
            onehot = tile_of_row[None, :] == torch.arange(t1 - t0, device=a.device)[:, None]
            r = torch.matmul(onehot.to(self.cdt), a3)  # (bh, tiles, kend): column sums per tile
            pooled = o.pooled.view(bh, *o.pooled.shape[2:])[:, t0:t1]
            nf = kend // b
            if nf:
                pooled[..., :nf] += r[..., : nf * b].view(bh, t1 - t0, nf, b).sum(-1)
            if kend % b:
                pooled[..., nf] += r[..., nf * b :].sum(-1)
            if o.received is not None:
                o.received.view(bh, p.Lk)[:, :kend] += r.sum(1)
        elif o.received is not None:
            o.received.view(bh, p.Lk)[:, :kend] += a3.sum(1)

    def _maps(self, a: Tensor, i0: int, i1: int, kend: int) -> None:
        p, o = self.p, self.o
        assert o.maps is not None and p.stats.maps is not None
        w0, w1 = p.stats.maps.query_window or (0, p.Lq)
        lo, hi = max(i0, w0), min(i1, w1)
        if lo >= hi:
            return
        a5 = a.view(p.B, p.Hkv, p.group, i1 - i0, kend)
        for slot, h in enumerate(p.stats.maps.heads):
            kv, g = divmod(h, p.group)
            o.maps[:, slot, lo - w0 : hi - w0, :kend] = a5[:, kv, g, lo - i0 : hi - i0]


def blockwise_attention(p: Problem, block_size: int | None = None) -> AttentionResult:
    """Exact attention with the statistics in ``p.stats``; see the module docstring."""
    st = p.stats
    bq = choose_block_rows(p, block_size)
    if flash_applicable(p) and not st.row_stats:
        out, lse = flash_forward(p)
        if st.maps is None:
            return AttentionResult(output=out, lse=lse, backend="torch")
        w0, w1 = st.maps.query_window or (0, p.Lq)
        o = _Sweep(p, bq, want_output=False, row_stats=False).run(w0, w1)
    else:
        o = _Sweep(p, bq, want_output=True, row_stats=st.row_stats).run(0, p.Lq)
        assert o.out is not None and o.lse is not None
        out, lse = o.out, o.lse
    res = AttentionResult(output=out, lse=lse, backend="torch", maps=o.maps)
    if st.received and o.received is not None:
        res.received = o.received
        if o.count is None:
            count = key_visible_counts(p).expand(p.B, p.H, p.Lk)
        else:
            count = o.count.expand(p.B, p.H, p.Lk)
        res.sink = torch.where(count > 0, o.received / count.clamp(min=1), 0.0)
    res.entropy, res.distance, res.span_mass = o.entropy, o.distance, o.span_mass
    res.argmax, res.argmax_prob = o.argmax, o.argmax_prob
    if o.pooled is not None:
        b = st.pooled_block
        assert b is not None
        res.pooled = o.pooled / pooled_cell_counts(p.Lq, p.Lk, b, out.device, o.pooled.dtype)
    return res
