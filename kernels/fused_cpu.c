/* Fused CPU attention with head statistics: one pass per tile of query rows.
 *
 * Built by kernels/fused_cpu_build.py (gcc -O3 -march=native -fopenmp) and driven by
 * kernels/fused_cpu.py, which documents the contract; the definitions of the statistics are
 * those of kernels/requests.py. A tile is the rows of the G query heads of one KV head for
 * `tile_rows` consecutive query positions: its scores against the keys of its band come from
 * one SGEMM (torch's own MKL, passed in as a pointer) into a buffer small enough to stay in
 * the core's cache; every row is then finished in three passes over that buffer (max; exp,
 * sum, entropy and distance terms; normalise, column sums, pooled tiles, spans) and the
 * output is a second SGEMM of the normalised tile with the values. Tiles run in parallel on
 * torch's own OpenMP runtime (the same libgomp, by soname). Column sums go to per-thread
 * copies that are added at the end, pooled tiles by atomic adds once per (head, row tile).
 * The kernel allocates nothing: the caller passes every buffer.
 */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

typedef void (*sgemm_t)(const char *, const char *, const int *, const int *, const int *,
                        const float *, const float *, const int *, const float *, const int *,
                        const float *, float *, const int *);

/* Mirrored field by field by kernels/fused_cpu.py (_Problem). */
typedef struct {
    int64_t B, H, Hkv, Lq, Lk, D;
    int64_t causal, window; /* window <= 0: none */
    double scale, softcap;  /* softcap <= 0: none */
    const float *q, *k, *v; /* contiguous (B,H,Lq,D), (B,Hkv,Lk,D), (B,Hkv,Lk,D) */
    const float *bias;      /* (B|1, H, Lk) contiguous, or NULL */
    int64_t bias_sb;        /* bias stride over the batch: 0 when broadcast */
    const uint8_t *mask;    /* bool (Bm, Hm, Lq|1, Lk), key stride 1, or NULL */
    int64_t mask_sb, mask_sh, mask_sq, mask_batches, mask_heads;
    const float *head_scale; /* (H,) or NULL */
    const float *sinks;      /* (H,) learned sink logits, or NULL */
    float *out;              /* (B, Lq, H, D) */
    float *lse;              /* (B, H, Lq) */
    float *entropy, *argmax_prob, *distance; /* (B, H, Lq) or NULL */
    int64_t *argmax;                         /* (B, H, Lq) or NULL */
    float *span_mass;                        /* (B, H, Lq, S) or NULL */
    const int64_t *spans;                    /* (S, 2) */
    int64_t n_spans;
    float *received;    /* (B, H, Lk) column sums, or NULL */
    float *count;       /* (Bm, Hm, Lk) rows that see each key, or NULL */
    float *pooled;      /* (B, H, ceil(Lq/pb), ceil(Lk/pb)) tile sums, or NULL */
    int64_t pool_block; /* pb */
    float *maps;              /* (B, n_maps, w1 - w0, Lk) zeroed, or NULL */
    const int64_t *map_heads; /* (n_maps,) query heads, duplicates allowed */
    int64_t n_maps, map_w0, map_w1;
    int64_t tile_rows, threads;
    float *scratch;             /* threads x scratch_per_thread, see wb_fused_attention */
    int64_t scratch_per_thread;
    float *rec_all, *cnt_all;   /* per-thread column sums (zeroed), or NULL */
    sgemm_t sgemm;
} wb_problem;

#define NEG (-FLT_MAX)

/* exp(x) for x <= 0 (Cephes expf: range reduction by ln 2, degree-6 polynomial; ~1 ulp);
 * exactly 1 at 0 and exactly 0 below -87. Written so that gcc vectorizes the loops it is in. */
static inline float wb_exp(float x) {
    const float xc = x < -87.0f ? -87.0f : x;
    const float n = __builtin_rintf(xc * 1.44269504088896341f); /* not the magic-number trick:
                                   -fassociative-math would fold (a + C) - C into a */
    float r = xc - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return x < -87.0f ? 0.0f : p * two_n;
}

/* c * tanh(s / c) through wb_exp: tanh|y| = (1 - e) / (1 + e), e = exp(-2|y|). */
static void softcap_row(float *s, int64_t n, float c) {
    const float inv = 1.0f / c;
    for (int64_t j = 0; j < n; j++) {
        const float y = s[j] * inv;
        const float ay = y < 0 ? -y : y;
        const float e = wb_exp(-2.0f * ay);
        const float th = (1.0f - e) / (1.0f + e);
        s[j] = c * (y < 0 ? -th : th);
    }
}

static void atomic_add(float *dst, float val) {
#pragma omp atomic
    *dst += val;
}

typedef struct {
    float *pl;     /* pooled sums of the current (head, row tile), nJ */
    int64_t h, I;  /* -1 when empty */
    int64_t j0, j1;/* touched key tiles */
} pool_acc;

static void pool_flush(const wb_problem *p, pool_acc *acc, int64_t b, int64_t nI, int64_t nJ) {
    if (acc->h < 0) return;
    float *dst = p->pooled + ((b * p->H + acc->h) * nI + acc->I) * nJ;
    for (int64_t J = acc->j0; J < acc->j1; J++) {
        atomic_add(dst + J, acc->pl[J]);
        acc->pl[J] = 0.0f;
    }
    acc->h = -1;
}

/* One row: s[0, width) holds the scaled scores of keys k0 .. k0 + width - 1; on return it holds
 * the probabilities (0 outside the visible range). Returns 0 when the row sees no key. */
static void finish_row(const wb_problem *p, float *s, int64_t width, int64_t k0, int64_t b,
                       int64_t h, int64_t i, float *rec, float *cnt, pool_acc *acc, int64_t nI,
                       int64_t nJ) {
    const int64_t Lq = p->Lq, Lk = p->Lk, pos = Lk - Lq + i;
    const int64_t row = (b * p->H + h) * Lq + i;
    int64_t lo = k0, hi = k0 + width;
    if (p->window > 0 && pos - p->window + 1 > lo) lo = pos - p->window + 1;
    if (p->causal && pos + 1 < hi) hi = pos + 1;
    lo -= k0;
    hi -= k0;
    const uint8_t *mrow = NULL;
    float m = NEG;
    if (hi > lo) {
        float *sv = s + lo;
        const int64_t n = hi - lo;
        if (p->softcap > 0) softcap_row(sv, n, (float)p->softcap);
        if (p->bias) {
            const float *br = p->bias + b * p->bias_sb + h * Lk + k0 + lo;
            for (int64_t j = 0; j < n; j++) sv[j] += br[j];
        }
        if (p->mask) {
            const int64_t hm = p->mask_heads == 1 ? 0 : h, bm = p->mask_batches == 1 ? 0 : b;
            mrow = p->mask + bm * p->mask_sb + hm * p->mask_sh + i * p->mask_sq + k0 + lo;
            for (int64_t j = 0; j < n; j++) sv[j] = mrow[j] ? sv[j] : NEG;
            if (cnt && (p->mask_batches == p->B || b == 0) && (p->mask_heads == p->H || h == 0)) {
                float *cr = cnt + (bm * p->mask_heads + hm) * Lk + k0 + lo;
                for (int64_t j = 0; j < n; j++) cr[j] += (float)mrow[j];
            }
        }
        for (int64_t j = 0; j < n; j++) m = sv[j] > m ? sv[j] : m;
    }
    if (m <= NEG / 2) { /* no visible key: output 0, LSE -inf (the sink's logit), statistics 0 */
        memset(s, 0, (size_t)width * sizeof(float));
        p->lse[row] = p->sinks ? p->sinks[h] : -INFINITY;
        if (p->entropy) p->entropy[row] = 0.0f;
        if (p->argmax) p->argmax[row] = 0, p->argmax_prob[row] = 0.0f;
        if (p->distance) p->distance[row] = 0.0f;
        for (int64_t c = 0; c < p->n_spans; c++) p->span_mass[row * p->n_spans + c] = 0.0f;
        return;
    }
    float *sv = s + lo;
    const int64_t n = hi - lo;
    /* e = exp(s - m); sum e, sum e*s (entropy), sum e*(pos - key) (distance) */
    float sum = 0.0f, dot = 0.0f, dsum = 0.0f;
    const float dpos = (float)(pos - k0 - lo);
    if (p->entropy || p->distance) {
        for (int64_t j = 0; j < n; j++) {
            const float e = wb_exp(sv[j] - m);
            sum += e;
            dot += e * sv[j];
            dsum += e * (dpos - (float)j);
            sv[j] = e;
        }
    } else {
        for (int64_t j = 0; j < n; j++) {
            const float e = wb_exp(sv[j] - m);
            sum += e;
            sv[j] = e;
        }
    }
    float inv = 1.0f / sum;
    const float lse = m + logf(sum);
    float ent = lse - dot * inv;
    if (p->sinks) { /* the sink joins the row: lse' = logaddexp(lse, sink), keys keep exp(lse - lse') */
        const float sk = p->sinks[h], hi_ = lse > sk ? lse : sk;
        const float lse_all = hi_ + log1pf(expf(-fabsf(lse - sk)));
        const float keep = expf(lse - lse_all);
        ent = keep * (ent - (lse - lse_all)) - expf(sk - lse_all) * (sk - lse_all);
        inv *= keep;
        p->lse[row] = lse_all;
    } else {
        p->lse[row] = lse;
    }
    if (p->entropy) p->entropy[row] = ent;
    if (p->distance) p->distance[row] = dsum * inv;
    if (p->argmax) { /* the first key at the maximum: e == 1 exactly there */
        int64_t at = 0;
        for (int64_t c = 0; c < n; c += 64) {
            const int64_t ce = c + 64 < n ? c + 64 : n;
            float mx = 0.0f;
            for (int64_t j = c; j < ce; j++) mx = sv[j] > mx ? sv[j] : mx;
            if (mx >= 1.0f) {
                for (at = c; at < ce && sv[at] < 1.0f; at++) {
                }
                break;
            }
        }
        p->argmax[row] = k0 + lo + at;
        p->argmax_prob[row] = sv[at] * inv;
    }
    for (int64_t j = 0; j < n; j++) sv[j] *= inv;
    memset(s, 0, (size_t)lo * sizeof(float));
    memset(s + hi, 0, (size_t)(width - hi) * sizeof(float));
    for (int64_t c = 0; c < p->n_spans; c++) {
        int64_t a0 = p->spans[2 * c] - k0, a1 = p->spans[2 * c + 1] - k0;
        a0 = a0 < lo ? lo : a0;
        a1 = a1 > hi ? hi : a1;
        float mass = 0.0f;
        for (int64_t j = a0; j < a1; j++) mass += s[j];
        p->span_mass[row * p->n_spans + c] = mass;
    }
    if (p->maps && i >= p->map_w0 && i < p->map_w1) {
        const int64_t wl = p->map_w1 - p->map_w0;
        for (int64_t slot = 0; slot < p->n_maps; slot++) {
            if (p->map_heads[slot] != h) continue;
            float *mr = p->maps + ((b * p->n_maps + slot) * wl + i - p->map_w0) * Lk + k0;
            memcpy(mr + lo, sv, (size_t)n * sizeof(float));
        }
    }
    if (rec) {
        float *rr = rec + (b * p->H + h) * Lk + k0 + lo;
        for (int64_t j = 0; j < n; j++) rr[j] += sv[j];
    }
    if (acc) {
        const int64_t pb = p->pool_block, I = i / pb;
        if (acc->h != h || acc->I != I) {
            pool_flush(p, acc, b, nI, nJ);
            acc->h = h, acc->I = I, acc->j0 = nJ, acc->j1 = 0;
        }
        const int64_t key0 = k0 + lo, key1 = k0 + hi;
        const int64_t J0 = key0 / pb, J1 = (key1 - 1) / pb + 1;
        for (int64_t J = J0; J < J1; J++) {
            const int64_t c0 = (J * pb > key0 ? J * pb : key0) - k0;
            const int64_t c1 = ((J + 1) * pb < key1 ? (J + 1) * pb : key1) - k0;
            float t = 0.0f;
            for (int64_t j = c0; j < c1; j++) t += s[j];
            acc->pl[J] += t;
        }
        if (J0 < acc->j0) acc->j0 = J0;
        if (J1 > acc->j1) acc->j1 = J1;
    }
}

/* Every buffer comes from the caller (torch's allocator, on the calling thread), so that nothing
 * here grows the worker threads' own malloc arenas: `scratch` holds, per thread, the scaled
 * queries and the outputs (G x tile_rows x D each), the score tile (G x tile_rows x band) and
 * the pooled row (ceil(Lk / pb)); `rec_all` / `cnt_all` hold the per-thread column sums
 * (threads x B x H x Lk and threads x Bm x Hm x Lk, zeroed). */
void wb_fused_attention(const wb_problem *p) {
    const int64_t B = p->B, H = p->H, Hkv = p->Hkv, Lq = p->Lq, Lk = p->Lk, D = p->D;
    const int64_t G = H / Hkv, off = Lk - Lq, TR = p->tile_rows;
    const int64_t ntp = (Lq + TR - 1) / TR, ntiles = B * Hkv * ntp;
    int64_t maxw = Lk;
    if (p->window > 0 && p->causal && TR + p->window - 1 < Lk) maxw = TR + p->window - 1;
    const int nt = (int)p->threads;
    const int64_t recn = p->received ? B * H * Lk : 0;
    const int64_t cntn = p->count ? p->mask_batches * p->mask_heads * Lk : 0;
    const int64_t pb = p->pool_block;
    const int64_t nJ = p->pooled ? (Lk + pb - 1) / pb : 0, nI = p->pooled ? (Lq + pb - 1) / pb : 0;
    float *rec_all = p->rec_all, *cnt_all = p->cnt_all;
    const float one = 1.0f, zero = 0.0f;
#pragma omp parallel num_threads(nt)
    {
        const int tid = omp_get_thread_num();
        float *qb = p->scratch + tid * p->scratch_per_thread;
        float *ob = qb + G * TR * D;
        float *sb = ob + G * TR * D;
        pool_acc acc = {sb + G * TR * maxw, -1, -1, 0, 0};
        memset(acc.pl, 0, (size_t)nJ * sizeof(float));
        float *rec = rec_all ? rec_all + tid * recn : NULL;
        float *cnt = cnt_all ? cnt_all + tid * cntn : NULL;
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < ntiles; it++) {
            const int64_t tp = ntp - 1 - it % ntp, bk = it / ntp; /* widest tiles first */
            const int64_t b = bk / Hkv, kvh = bk % Hkv;
            const int64_t i0 = tp * TR, i1 = i0 + TR < Lq ? i0 + TR : Lq, n = i1 - i0;
            int64_t k0 = 0, kend = Lk;
            if (p->window > 0 && off + i0 - p->window + 1 > 0) k0 = off + i0 - p->window + 1;
            if (p->causal && off + i1 < Lk) kend = off + i1;
            const int64_t width = kend > k0 ? kend - k0 : 0;
            const int rows = (int)(G * n), w = (int)width, d = (int)D;
            for (int64_t g = 0; g < G; g++) {
                const float *src = p->q + ((b * H + kvh * G + g) * Lq + i0) * D;
                float *dst = qb + g * n * D;
                const float sc = (float)p->scale;
                for (int64_t x = 0; x < n * D; x++) dst[x] = src[x] * sc;
            }
            if (w > 0) {
                const float *kb = p->k + ((b * Hkv + kvh) * Lk + k0) * D;
                /* S^T (width x rows, column-major) = K_band (width x D) . Q^T */
                p->sgemm("T", "N", &w, &rows, &d, &one, kb, &d, qb, &d, &zero, sb, &w);
            }
            for (int64_t r = 0; r < rows; r++) {
                const int64_t g = r / n, t = r % n;
                finish_row(p, sb + r * width, width, k0, b, kvh * G + g, i0 + t, rec, cnt,
                           nJ ? &acc : NULL, nI, nJ);
            }
            if (nJ) pool_flush(p, &acc, b, nI, nJ);
            if (w > 0) {
                const float *vb = p->v + ((b * Hkv + kvh) * Lk + k0) * D;
                /* O^T (D x rows) = V_band^T (D x width) . A^T (width x rows) */
                p->sgemm("N", "N", &d, &rows, &w, &one, vb, &d, sb, &w, &zero, ob, &d);
            } else {
                memset(ob, 0, (size_t)(rows * D) * sizeof(float));
            }
            for (int64_t r = 0; r < rows; r++) {
                const int64_t g = r / n, t = r % n, h = kvh * G + g;
                const float hs = p->head_scale ? p->head_scale[h] : 1.0f;
                float *dst = p->out + ((b * Lq + i0 + t) * H + h) * D;
                for (int64_t x = 0; x < D; x++) dst[x] = ob[r * D + x] * hs;
            }
        }
    }
    if (rec_all) {
#pragma omp parallel for num_threads(nt)
        for (int64_t x = 0; x < recn; x++) {
            float t = 0.0f;
            for (int c = 0; c < nt; c++) t += rec_all[c * recn + x];
            p->received[x] = t;
        }
    }
    for (int64_t x = 0; x < cntn; x++) {
        float t = 0.0f;
        for (int c = 0; c < nt; c++) t += cnt_all[c * cntn + x];
        p->count[x] = t;
    }
}
