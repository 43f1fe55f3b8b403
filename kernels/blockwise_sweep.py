"""One blockwise sweep over query rows: output, LSE and every statistic of each block at once.

See :mod:`kernels.blockwise` for the method. Per block of query rows ``[i0, i1)`` the keys
scored are the band ``[k0, kend)`` = ``[p.band_start(i0), p.band_end(i1))``: all keys up to the
causal end, or, with a sliding window, only those the block's window reaches, so the score
buffers are ``rows x band`` and never ``Lq x Lk``. Inside the band, the causal diagonal square
is the last ``n`` columns (upper triangle hidden) and the window's edge is the first ``n``
columns (lower triangle hidden, shifted when the band start is clamped at key 0). Every key
offset (columns statistics, distances, spans, maps, argmax) is shifted by ``k0``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kernels.blockwise_buffers import (
    BlockOutputs,
    add_column_tiles,
    allocate_outputs,
    extra_columns,
    max_band_width,
)
from kernels.problem import Problem


class BlockSweep:
    """One pass over query blocks ``[r0, r1)``; see the module docstring."""

    def __init__(self, p: Problem, bq: int, want_output: bool, row_stats: bool) -> None:
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
        width = max_band_width(p, bq)
        self.qbuf = torch.empty(n_rows * p.D, dtype=self.cdt, device=dev)
        self.sbuf = torch.empty(n_rows * width, dtype=self.cdt, device=dev)
        self.pbuf = torch.empty(n_rows * width, dtype=self.cdt, device=dev)
        self.tri = torch.ones(bq, bq, dtype=torch.bool, device=dev).triu(1)
        self.low = self.tri.T.contiguous()  # strictly lower triangle: the window's edge
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
        self.sink4 = None
        if p.sinks is not None:
            self.sink4 = p.sinks.to(self.cdt).view(1, p.Hkv, p.group, 1)
        self.jpos = torch.arange(max(p.Lk, bq), dtype=self.cdt, device=dev)
        self.o = allocate_outputs(p, want_output, row_stats)
        self.wcols = extra_columns(p, row_stats, self.cdt)

    def run(self, r0: int, r1: int) -> BlockOutputs:
        for i0 in range(r0, r1, self.bq):
            self._block(i0, min(r1, i0 + self.bq))
        return self.o

    def _window_edge(self, i0: int, n: int, k0: int, width: int) -> tuple[int, Tensor] | None:
        """``(cols, hidden)``: the band's first ``cols`` columns hide ``hidden`` (n x cols)."""
        p = self.p
        if p.window is None:
            return None
        e = k0 - (p.offset + i0 - p.window + 1)  # > 0 when the band start is clamped
        cols = min(n - e, width)
        if cols <= 0:
            return None
        return cols, self.low[:n, e : e + cols]

    def _block(self, i0: int, i1: int) -> None:
        p, o = self.p, self.o
        B, Hkv, G, D = p.B, p.Hkv, p.group, p.D
        n = i1 - i0
        k0, kend = p.band_start(i0), p.band_end(i1)
        width = kend - k0
        rows = G * n

        # scores of this block's rows of every head against the keys of its band
        qb = self.qbuf[: B * Hkv * rows * D].view(B, Hkv, G, n, D)
        qb.copy_(self.q5[:, :, :, i0:i1])
        qb.mul_(p.scale)
        s = self.sbuf[: B * Hkv * rows * width].view(B, Hkv, rows, width)
        torch.matmul(qb.view(B, Hkv, rows, D), self.kt[..., k0:kend], out=s)
        if p.softcap is not None:  # c * tanh(s / c), before the bias (Gemma 2)
            s.div_(p.softcap).tanh_().mul_(p.softcap)
        s5 = s.view(B, Hkv, G, n, width)
        if self.bias5 is not None:
            s5.add_(self.bias5[..., k0:kend])
        if p.causal:  # the last n keys form the diagonal square; hide its upper triangle
            s5[..., width - n : width].add_(self.negtri[:n, :n])
        edge = self._window_edge(i0, n, k0, width)
        if edge is not None:
            s5[..., : edge[0]].masked_fill_(edge[1], self.neg)
        mb = None
        if self.mask5 is not None:
            mb = (
                self.mask5[..., k0:kend]
                if self.mask5.shape[3] == 1
                else self.mask5[..., i0:i1, k0:kend]
            )
            s5.masked_fill_(~mb, self.neg)

        # probabilities (hidden cells underflow to exactly 0), row max, LSE
        a = self.pbuf[: B * Hkv * rows * width].view(B, Hkv, rows, width)
        torch.softmax(s, dim=-1, out=a)
        idx = None
        if self.row_stats and p.stats.argmax:
            # a >= 0, so its bits order like integers; an integer max-with-index is ~30% faster
            bits, idx = a.view(self.int_view).max(dim=-1)
            amax = bits.view(self.cdt)
            m = s.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
            idx = idx + k0
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
        sink = keep = None
        if self.sink4 is not None:  # the sink joins the denominator: lse' = logaddexp(lse, sink)
            sink = self.sink4.expand(B, Hkv, G, n).reshape(B, Hkv, rows)
            lse_all = torch.logaddexp(lse, sink)
            keep = torch.exp(lse - lse_all)  # 1 - sink mass (0 on rows that see no key)

        if self.row_stats:  # on the probabilities over the real keys, then rescaled by keep
            self._row_stats(s, a, lse, idx, amax, valid, (keep, sink), i0, i1, k0, kend)
        if keep is not None:
            a.mul_(keep.unsqueeze(-1))
            lse = lse_all
        if o.out is not None:
            self._write_output(a, lse, i0, i1, k0, kend)
        if self.row_stats:
            self._column_stats(a, i0, i1, k0, kend)
            if o.count is not None:
                assert mb is not None
                vis = mb.expand(*mb.shape[:3], n, width).clone()
                if p.causal:
                    vis[..., width - n : width] &= ~self.tri[:n, :n]
                if edge is not None:
                    vis[..., : edge[0]] &= ~edge[1]
                o.count.view(*mb.shape[:3], p.Lk)[..., k0:kend] += vis.sum(-2)
        if o.maps is not None:
            self._maps(a, i0, i1, k0, kend)

    def _put(self, dst: Tensor, val: Tensor, i0: int, i1: int) -> None:
        """Write per-row values of shape (B, Hkv, G*n, ...) into dst (B, H, Lq, ...)."""
        p = self.p
        dst.view(p.B, p.Hkv, p.group, p.Lq, *dst.shape[3:])[:, :, :, i0:i1].copy_(
            val.view(p.B, p.Hkv, p.group, i1 - i0, *val.shape[3:])
        )

    def _write_output(self, a: Tensor, lse: Tensor, i0: int, i1: int, k0: int, kend: int) -> None:
        p, o = self.p, self.o
        B, Hkv, G, D = p.B, p.Hkv, p.group, p.D
        n = i1 - i0
        ob5 = torch.matmul(a, self.v[:, :, k0:kend]).view(B, Hkv, G, n, D)
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
        sinks: tuple[Tensor | None, Tensor | None],
        i0: int,
        i1: int,
        k0: int,
        kend: int,
    ) -> None:
        """Per-row statistics of a block from ``a`` = the softmax over the real keys
        (``log a = s - lse``), rescaled by ``keep = exp(lse - lse')`` when a sink takes
        ``1 - keep`` of each row (``lse' = logaddexp(lse, sink)``)."""
        p, o, st = self.p, self.o, self.p.stats
        n = i1 - i0
        keep, sink = sinks
        if o.entropy is not None:
            # -sum_j a_j log a_j = -sum_j a_j (s_j - lse) = lse - <a, s>   (sum_j a_j = 1)
            s.mul_(a)  # hidden cells: finite minimum * 0 = 0
            ent = lse - s.sum(dim=-1)
            if keep is not None and sink is not None:
                # keys keep * a_j: keep * (ent - log keep); the sink column: -m log m
                lse_all = torch.logaddexp(lse, sink)
                ent = keep * (ent - (lse - lse_all)) - torch.exp(sink - lse_all) * (sink - lse_all)
            self._put(o.entropy, ent if valid is None else torch.where(valid, ent, 0.0), i0, i1)
        if o.argmax is not None:
            assert idx is not None and amax is not None and o.argmax_prob is not None
            if keep is not None:
                amax = amax * keep
            if valid is not None:
                idx = torch.where(valid, idx, 0)
                amax = torch.where(valid, amax, 0.0)
            self._put(o.argmax, idx, i0, i1)
            self._put(o.argmax_prob, amax, i0, i1)
        if self.wcols is not None:
            w = self.wcols[k0:kend]
            if st.distance:
                torch.sub(self.jpos[k0:kend], p.offset + i0, out=w[:, 0])
            pw = torch.matmul(a, w)  # (B, Hkv, G*n, E)
            c0 = 0
            if st.distance:
                assert o.distance is not None
                # pos_i - j = (i - i0) - (j - offset - i0): both terms small near the diagonal
                rel = self.jpos[:n].repeat(p.group)
                dist = (rel if valid is None else valid * rel) - pw[..., 0]
                self._put(o.distance, dist if keep is None else dist * keep, i0, i1)
                c0 = 1
            if st.spans:
                assert o.span_mass is not None
                spans = pw[..., c0:]
                self._put(o.span_mass, spans if keep is None else spans * keep[..., None], i0, i1)

    def _column_stats(self, a: Tensor, i0: int, i1: int, k0: int, kend: int) -> None:
        p, o = self.p, self.o
        bh, n = p.B * p.H, i1 - i0
        a3 = a.view(bh, n, kend - k0)
        if o.pooled is not None:
            b = p.stats.pooled_block
            assert b is not None
            t0, t1 = i0 // b, (i1 - 1) // b + 1
            tile_of_row = torch.arange(i0, i1, device=a.device) // b - t0
            onehot = tile_of_row[None, :] == torch.arange(t1 - t0, device=a.device)[:, None]
            r = torch.matmul(onehot.to(self.cdt), a3)  # (bh, tiles, band): column sums per tile
            add_column_tiles(o.pooled.view(bh, *o.pooled.shape[2:])[:, t0:t1], r, k0, kend, b)
            if o.received is not None:
                o.received.view(bh, p.Lk)[:, k0:kend] += r.sum(1)
        elif o.received is not None:
            o.received.view(bh, p.Lk)[:, k0:kend] += a3.sum(1)

    def _maps(self, a: Tensor, i0: int, i1: int, k0: int, kend: int) -> None:
        p, o = self.p, self.o
        assert o.maps is not None and p.stats.maps is not None
        w0, w1 = p.stats.maps.query_window or (0, p.Lq)
        lo, hi = max(i0, w0), min(i1, w1)
        if lo >= hi:
            return
        a5 = a.view(p.B, p.Hkv, p.group, i1 - i0, kend - k0)
        for slot, h in enumerate(p.stats.maps.heads):
            kv, g = divmod(h, p.group)
            o.maps[:, slot, lo - w0 : hi - w0, k0:kend] = a5[:, kv, g, lo - i0 : hi - i0]
