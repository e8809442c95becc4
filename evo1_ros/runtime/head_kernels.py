"""The action head's Euler loop as 19 Triton kernels per step (the torch path launches ~116).

One step of the head (model/evo1.py, ActionHead.velocity) is, per Euler step, for M = B x H action
rows of width W: an action encoder (3 linears), 8 DiT blocks (LN -> Q -> cross-attention over the
cached context keys/values -> out projection + residual; LN + time -> FFN -> residual) and a
read-out (LN -> one linear over the whole flattened chunk -> 2-layer MLP). At M = 50 every GEMM is
tiny and the cost is kernel boundaries and re-reading weights, so each kernel here does as much
of a step as one pass over its weights allows:

    encode   Euler update of the previous step + action encoder (fc1 and the position code on the
             fly, fc2 split over programs, fc3 partial sums)                          1 kernel
    attend   per (head, row block): LN1 + Q projection + masked attention + this head's share
             of the out projection, + residual                                         8 kernels
    ffn      per (hidden slice, row block): LN2 + fc1 + time + GELU + this slice's share of
             fc2, + residual                                                           8 kernels
    pool     per (output slice, chunk row): LN_out + that row's share of the read-out linear
                                                                                       1 kernel
    out_mlp  per hidden slice: fc1 + ReLU + that slice's share of fc2: the velocity    1 kernel

The flow time enters each FFN as fc1(LN2(x) + t_i) = fc1(LN2(x)) + W1 t_i: for a fixed step count
the W1 t_i + b1 are computed once (`time_bias`). The keys/values of all blocks are computed once per
chunk by torch. The chunk's 32 steps are a fixed sequence of launches over fixed buffers with no
host decision, so the engine captures them in its CUDA graph like the torch path.

How kernels that split a GEMM's reduction over programs add up without a reduction kernel: every
such kernel adds its partial result with atomics into a buffer that is zero when it starts. The
residual stream lives in a ring of three buffers. Kernel k reads X[k % 3] (complete, since
kernel k-1 has finished), adds its output (and, from one designated program per tile, its input
plus its bias) into X[(k+1) % 3], and zeroes X[(k+2) % 3], which kernel k-1 read and kernel k+1
will add into. The Euler state and the velocity alternate between two buffers the same way.
The adds are relaxed atomics (only the kernel boundary orders them); they make the last bits of
fp32 sums depend on the order programs finish in, and equivalence with the eager model holds to
1e-4 in fp32 regardless.

Runs on CUDA, or on CPU under Triton's interpreter (TRITON_INTERPRET=1 set before triton is
imported), which is how CI checks it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..model.evo1 import ActionHead, time_index



@dataclass(frozen=True)
class Tiles:
    """Work per program. m: action rows (M = 50 on evo1-0.77b, 16 on evo1-tiny); k: reduction
    chunk; n: output chunk; l: keys per attention chunk; f: hidden slice of the FFN, the action
    encoder and the output MLP; pool_rows: chunk rows per read-out program. Powers of two, >= 16
    except pool_rows. Many small programs spread the weight reads over a GPU's SMs; the
    interpreter runs programs one after another, so fewer, larger ones are faster there."""

    m: int = 16
    k: int = 64
    n: int = 64
    l: int = 64  # noqa: E741  (the attention's key axis, L)
    f: int = 64
    pool_rows: int = 1


GPU_TILES = Tiles()
INTERPRETER_TILES = Tiles(m=64, k=128, n=128, l=128, f=128, pool_rows=64)


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _mm(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """A @ b (+ acc) accumulated in fp32. UPCAST: in fp32, for Triton's interpreter, which
    multiplies bf16 tiles wrongly (it reads their bits as integers)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _ln_stats(x_ptr, rows, row_ok, W: tl.constexpr, BK: tl.constexpr, eps):
    """Mean and 1/std of rows (BM,) of a (., W) fp32 matrix: two passes, as LayerNorm computes."""
    total = tl.zeros(rows.shape, tl.float32)
    for k0 in range(0, W, BK):
        cols = k0 + tl.arange(0, BK)
        ok = row_ok[:, None] & (cols[None, :] < W)
        total += tl.sum(tl.load(x_ptr + rows[:, None] * W + cols[None, :], mask=ok, other=0.0), axis=1)
    mean = total / W
    var = tl.zeros(rows.shape, tl.float32)
    for k0 in range(0, W, BK):
        cols = k0 + tl.arange(0, BK)
        ok = row_ok[:, None] & (cols[None, :] < W)
        d = tl.where(ok, tl.load(x_ptr + rows[:, None] * W + cols[None, :], mask=ok, other=0.0) - mean[:, None], 0.0)
        var += tl.sum(d * d, axis=1)
    return mean, 1.0 / tl.sqrt(var / W + eps)


@triton.jit
def _ln_tile(x_ptr, rows, row_ok, cols, mean, rstd, g_ptr, b_ptr, W: tl.constexpr):
    """LayerNorm(x)[rows, cols] (affine), zero outside the matrix."""
    ok = row_ok[:, None] & (cols[None, :] < W)
    x = tl.load(x_ptr + rows[:, None] * W + cols[None, :], mask=ok, other=0.0)
    g = tl.load(g_ptr + cols, mask=cols < W, other=0.0)
    b = tl.load(b_ptr + cols, mask=cols < W, other=0.0)
    return tl.where(ok, (x - mean[:, None]) * rstd[:, None] * g[None, :] + b[None, :], 0.0)


@triton.jit
def _add_out(x_in, x_out, x_zero, part, rows, row_ok, cols, bias_ptr, first, W: tl.constexpr,
             RESIDUAL: tl.constexpr):
    """Epilogue: add `part` (BM, BN) into x_out; the `first` program of each tile also adds the bias
    and the input rows (RESIDUAL), and zeroes the ring's third buffer there."""
    ok = row_ok[:, None] & (cols[None, :] < W)
    offs = rows[:, None] * W + cols[None, :]
    if first:
        if RESIDUAL:
            part += tl.load(x_in + offs, mask=ok, other=0.0)
        part += tl.load(bias_ptr + cols, mask=cols < W, other=0.0).to(tl.float32)[None, :]
        tl.store(x_zero + offs, tl.zeros(part.shape, tl.float32), mask=ok)
    tl.atomic_add(x_out + offs, part, mask=ok, sem="relaxed")


@triton.jit
def _encode(e_in, v_in, e_out, v_zero, p_zero, x_out, x_zero, action_mask, scale,
            w1, b1, pos, w2, b2, w3, b3, M, A,
            W: tl.constexpr, BM: tl.constexpr, BA: tl.constexpr, BK: tl.constexpr, BS: tl.constexpr,
            BN: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    s, r, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    dt = w1.dtype.element_ty
    rows = r * BM + tl.arange(0, BM)
    row_ok = rows < M
    ac = tl.arange(0, BA)
    ok = row_ok[:, None] & (ac[None, :] < A)
    offs = b * M * A + rows[:, None] * A + ac[None, :]
    mask = tl.load(action_mask + b * A + ac, mask=ac < A, other=0.0)[None, :]
    # Euler update with the previous step's velocity (scale 0 on the first step).
    e = tl.load(e_in + offs, mask=ok, other=0.0) + scale * tl.load(v_in + offs, mask=ok, other=0.0) * mask
    if s == 0:
        tl.store(e_out + offs, e, mask=ok)
        tl.store(v_zero + offs, tl.zeros(e.shape, tl.float32), mask=ok)
        if r == 0:
            for n0 in range(0, W, BN):
                cols = n0 + tl.arange(0, BN)
                tl.store(p_zero + b * W + cols, tl.zeros([BN], tl.float32), mask=cols < W)
    a = (e * mask).to(dt)
    # fc2 over this program's slice of outputs, its input relu(fc1(a)) + position made chunk by chunk.
    sl = s * BS + tl.arange(0, BS)
    u = tl.zeros([BM, BS], tl.float32)
    for k0 in range(0, W, BK):
        cols = k0 + tl.arange(0, BK)
        w1t = tl.load(w1 + cols[None, :] * A + ac[:, None], mask=(ac[:, None] < A) & (cols[None, :] < W), other=0.0)
        h = _mm(a, w1t, None, PRECISION, UPCAST) + tl.load(b1 + cols, mask=cols < W, other=0.0)[None, :]
        h = tl.maximum(h, 0.0) + tl.load(pos + rows[:, None] * W + cols[None, :],
                                         mask=row_ok[:, None] & (cols[None, :] < W), other=0.0)
        w2t = tl.load(w2 + sl[None, :] * W + cols[:, None], mask=(sl[None, :] < W) & (cols[:, None] < W), other=0.0)
        u = _mm(h.to(dt), w2t, u, PRECISION, UPCAST)
    u = tl.maximum(u + tl.load(b2 + sl, mask=sl < W, other=0.0)[None, :], 0.0).to(dt)
    for n0 in range(0, W, BN):
        cols = n0 + tl.arange(0, BN)
        w3t = tl.load(w3 + cols[None, :] * W + sl[:, None], mask=(sl[:, None] < W) & (cols[None, :] < W), other=0.0)
        part = _mm(u, w3t, None, PRECISION, UPCAST)
        # The action tokens start the residual stream: no input to add.
        _add_out(x_zero, x_out + b * M * W, x_zero + b * M * W, part, rows, row_ok, cols, b3, s == 0, W, False)


@triton.jit
def _attend(x_in, x_out, x_zero, g, beta, wq, bq, kv, key_ok, wo, bo, M, L, k_col, v_col, eps, scale,
            W: tl.constexpr, D: tl.constexpr, KV_STRIDE: tl.constexpr, HAS_KEY_MASK: tl.constexpr,
            BM: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr, BL: tl.constexpr, BN: tl.constexpr,
            PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    h, r, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    dt = wq.dtype.element_ty
    x_in += b * M * W
    rows = r * BM + tl.arange(0, BM)
    row_ok = rows < M
    dd = tl.arange(0, BD)
    d_ok = dd < D
    mean, rstd = _ln_stats(x_in, rows, row_ok, W, BK, eps)
    q = tl.zeros([BM, BD], tl.float32)
    for k0 in range(0, W, BK):
        cols = k0 + tl.arange(0, BK)
        a = _ln_tile(x_in, rows, row_ok, cols, mean, rstd, g, beta, W).to(dt)
        wt = tl.load(wq + (h * D + dd)[None, :] * W + cols[:, None], mask=d_ok[None, :] & (cols[:, None] < W),
                     other=0.0)
        q = _mm(a, wt, q, PRECISION, UPCAST)
    q = ((q + tl.load(bq + h * D + dd, mask=d_ok, other=0.0)[None, :]) * scale).to(dt)
    # Online softmax over the keys in chunks of BL.
    kv += b * L * KV_STRIDE + h * D
    m_i = tl.full([BM], -1e30, tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BD], tl.float32)
    for l0 in range(0, L, BL):
        keys = l0 + tl.arange(0, BL)
        valid = keys < L
        if HAS_KEY_MASK:
            valid = valid & (tl.load(key_ok + b * L + keys, mask=keys < L, other=0) != 0)
        kt = tl.load(kv + k_col + keys[None, :] * KV_STRIDE + dd[:, None], mask=d_ok[:, None] & (keys[None, :] < L),
                     other=0.0)
        s = tl.where(valid[None, :], _mm(q, kt, None, PRECISION, UPCAST), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        vt = tl.load(kv + v_col + keys[:, None] * KV_STRIDE + dd[None, :], mask=(keys[:, None] < L) & d_ok[None, :],
                     other=0.0)
        acc = acc * alpha[:, None] + _mm(p.to(dt), vt, None, PRECISION, UPCAST)
        m_i = m_new
    o = (acc / l_i[:, None]).to(dt)
    # This head's share of the out projection: o_h @ Wo[:, head h columns]^T.
    for n0 in range(0, W, BN):
        cols = n0 + tl.arange(0, BN)
        wt = tl.load(wo + cols[None, :] * W + h * D + dd[:, None], mask=d_ok[:, None] & (cols[None, :] < W), other=0.0)
        part = _mm(o, wt, None, PRECISION, UPCAST)
        _add_out(x_in, x_out + b * M * W, x_zero + b * M * W, part, rows, row_ok, cols, bo, h == 0, W, True)


@triton.jit
def _ffn(x_in, x_out, x_zero, g, beta, w1, time_bias, w2, b2, M, eps,
         W: tl.constexpr, F: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, BF: tl.constexpr,
         BN: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    f, r, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    dt = w1.dtype.element_ty
    x_in += b * M * W
    rows = r * BM + tl.arange(0, BM)
    row_ok = rows < M
    hid = f * BF + tl.arange(0, BF)
    h_ok = hid < F
    mean, rstd = _ln_stats(x_in, rows, row_ok, W, BK, eps)
    u = tl.zeros([BM, BF], tl.float32)
    for k0 in range(0, W, BK):
        cols = k0 + tl.arange(0, BK)
        a = _ln_tile(x_in, rows, row_ok, cols, mean, rstd, g, beta, W).to(dt)
        wt = tl.load(w1 + hid[None, :] * W + cols[:, None], mask=h_ok[None, :] & (cols[:, None] < W), other=0.0)
        u = _mm(a, wt, u, PRECISION, UPCAST)
    u += tl.load(time_bias + hid, mask=h_ok, other=0.0)[None, :]  # W1 t_i + b1
    u = (0.5 * u * (1.0 + tl.erf(u * 0.7071067811865476))).to(dt)  # exact GELU, as F.gelu
    for n0 in range(0, W, BN):
        cols = n0 + tl.arange(0, BN)
        wt = tl.load(w2 + cols[None, :] * F + hid[:, None], mask=h_ok[:, None] & (cols[None, :] < W), other=0.0)
        part = _mm(u, wt, None, PRECISION, UPCAST)
        _add_out(x_in, x_out + b * M * W, x_zero + b * M * W, part, rows, row_ok, cols, b2, f == 0, W, True)


@triton.jit
def _pool(x_in, x_zero, g, beta, wp, bp, p_out, M, eps, ROWS,
          W: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr):
    n, r, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    x_in += b * M * W
    outs = n * BN + tl.arange(0, BN)
    acc = tl.zeros([BN], tl.float32)
    for m in range(r * ROWS, tl.minimum(r * ROWS + ROWS, M)):
        total = tl.zeros([BK], tl.float32)
        for k0 in range(0, W, BK):
            cols = k0 + tl.arange(0, BK)
            total += tl.load(x_in + m * W + cols, mask=cols < W, other=0.0)
        mean = tl.sum(total) / W
        var = tl.zeros([BK], tl.float32)
        for k0 in range(0, W, BK):
            cols = k0 + tl.arange(0, BK)
            d = tl.where(cols < W, tl.load(x_in + m * W + cols, mask=cols < W, other=0.0) - mean, 0.0)
            var += d * d
        rstd = 1.0 / tl.sqrt(tl.sum(var) / W + eps)
        for k0 in range(0, W, BK):
            cols = k0 + tl.arange(0, BK)
            x = tl.load(x_in + m * W + cols, mask=cols < W, other=0.0)
            xn = (x - mean) * rstd * tl.load(g + cols, mask=cols < W, other=0.0) + tl.load(beta + cols, mask=cols < W,
                                                                                           other=0.0)
            # Row m of the chunk meets columns m*W .. m*W+W-1 of the read-out over the flattened chunk.
            wt = tl.load(wp + outs[:, None] * (M * W) + m * W + cols[None, :],
                         mask=(outs[:, None] < W) & (cols[None, :] < W), other=0.0)
            acc += tl.sum(wt.to(tl.float32) * xn[None, :], axis=1)
        if n == 0:
            for k0 in range(0, W, BK):
                cols = k0 + tl.arange(0, BK)
                tl.store(x_zero + b * M * W + m * W + cols, tl.zeros([BK], tl.float32), mask=cols < W)
    if r == 0:
        acc += tl.load(bp + outs, mask=outs < W, other=0.0).to(tl.float32)
    tl.atomic_add(p_out + b * W + outs, acc, mask=outs < W, sem="relaxed")


@triton.jit
def _out_mlp(p_in, w1, b1, w2, b2, v_out, W, HID, OUT, BS: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr):
    s, b = tl.program_id(0), tl.program_id(1)
    hid = s * BS + tl.arange(0, BS)
    h_ok = hid < HID
    y = tl.zeros([BS], tl.float32)
    for k0 in range(0, W, BK):
        cols = k0 + tl.arange(0, BK)
        p = tl.load(p_in + b * W + cols, mask=cols < W, other=0.0)
        wt = tl.load(w1 + hid[:, None] * W + cols[None, :], mask=h_ok[:, None] & (cols[None, :] < W), other=0.0)
        y += tl.sum(wt.to(tl.float32) * p[None, :], axis=1)
    y = tl.where(h_ok, tl.maximum(y + tl.load(b1 + hid, mask=h_ok, other=0.0).to(tl.float32), 0.0), 0.0)
    for n0 in range(0, OUT, BN):
        outs = n0 + tl.arange(0, BN)
        wt = tl.load(w2 + outs[None, :] * HID + hid[:, None], mask=h_ok[:, None] & (outs[None, :] < OUT), other=0.0)
        part = tl.sum(wt.to(tl.float32) * y[:, None], axis=0)
        if s == 0:
            part += tl.load(b2 + outs, mask=outs < OUT, other=0.0).to(tl.float32)
        tl.atomic_add(v_out + b * OUT + outs, part, mask=outs < OUT, sem="relaxed")


class FusedActionHead:
    """context keys/values + Euler loop of `head` for `steps` steps, with the kernels above; call it
    like `Evo1.denoise` after `context`: (context, key_mask, noise, mask) -> actions (B, H, A) fp32.

    Reads the head's weights at every call, except the per-step time biases, which are computed
    here from fc1 and the time table: build a new one after changing the weights."""

    def __init__(self, head: ActionHead, steps: int, tiles: Tiles | None = None):
        dtype = head.pool.weight.dtype
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"head_kernels triton runs float32, bfloat16 or float16 weights, not {dtype}")
        if int(steps) < 1:
            raise ValueError(f"the Euler loop needs at least 1 step, got {steps}")
        device = head.pool.weight.device
        if device.type == "cpu" and not interpreted():
            raise ValueError("head_kernels triton needs a CUDA device, or Triton's CPU interpreter "
                             "(TRITON_INTERPRET=1 in the environment before triton is imported)")
        self.head, self.steps = head, int(steps)
        self.tiles = tiles or (INTERPRETER_TILES if device.type == "cpu" else GPU_TILES)
        width = head.pool.in_features // head.horizon
        self.width, self.heads = width, head.blocks[0].attn.heads
        self.ffn = head.blocks[0].fc1.out_features
        # fp32 GEMMs exactly (no TF32) for fp32 weights; half types use the tensor cores as they are.
        self.precision = "ieee" if dtype == torch.float32 else "tf32"
        with torch.no_grad():
            times = torch.stack([head.time_table[time_index(i / steps)] for i in range(steps)])
            times = times.to(dtype).float()  # rounded as the torch path rounds the time embedding
            self.time_bias = torch.stack(
                [times @ blk.fc1.weight.float().T + blk.fc1.bias.float() for blk in head.blocks], dim=1
            ).contiguous()  # (steps, blocks, ffn)
        self.launches = 0  # kernel launches so far; a step launches launches_per_step of them
        self.launches_per_step = 3 + 2 * len(head.blocks)

    def _launch(self, kernel, grid, *args, **meta):
        self.launches += 1
        kernel[grid](*args, **meta)

    def __call__(self, context, key_mask, noise, mask) -> torch.Tensor:
        head, w, nb = self.head, self.width, len(self.head.blocks)
        b, m, a = noise.shape
        dtype, device = head.pool.weight.dtype, context.device
        # Keys and values of every block, once per chunk: (B, L, 2 x blocks x W), K first.
        kv = torch.cat([blk.attn.k_proj(context) for blk in head.blocks]
                       + [blk.attn.v_proj(context) for blk in head.blocks], dim=-1).contiguous()
        length = kv.shape[1]
        key_ok = key_mask.to(torch.int8).contiguous() if key_mask is not None else kv  # unread without a mask
        action_mask = mask.reshape(b, -1, a)[:, 0].float().contiguous()  # (B, A): the same for every row
        x = torch.zeros(3, b, m, w, device=device)
        pooled = torch.zeros(b, w, device=device)
        euler = torch.zeros(2, b, m, a, device=device)
        euler[0] = noise.float() * action_mask[:, None, :]
        velocity = torch.zeros(2, b, m * a, device=device)
        enc = head.action_encoder
        dt = 1.0 / self.steps
        t = self.tiles
        k = 0  # residual kernels so far: the ring position
        rows = triton.cdiv(m, t.m)
        common = {"PRECISION": self.precision, "UPCAST": interpreted() and dtype == torch.bfloat16}
        for i in range(self.steps):
            cur, nxt = i % 2, (i + 1) % 2
            self._launch(_encode, (triton.cdiv(w, t.f), rows, b),
                         euler[cur], velocity[cur], euler[nxt], velocity[nxt], pooled, x[(k + 1) % 3], x[(k + 2) % 3],
                         action_mask, 0.0 if i == 0 else dt, enc.fc1.weight, enc.fc1.bias, enc.position,
                         enc.fc2.weight, enc.fc2.bias, enc.fc3.weight, enc.fc3.bias, m, a,
                         W=w, BM=t.m, BA=max(16, triton.next_power_of_2(a)), BK=t.k, BS=t.f,
                         BN=t.n, **common)
            k += 1
            for j, blk in enumerate(head.blocks):
                attn = blk.attn
                d = w // self.heads
                self._launch(_attend, (self.heads, rows, b),
                             x[k % 3], x[(k + 1) % 3], x[(k + 2) % 3], blk.norm1.weight, blk.norm1.bias,
                             attn.q_proj.weight, attn.q_proj.bias, kv, key_ok, attn.out_proj.weight,
                             attn.out_proj.bias, m, length, j * w, (nb + j) * w, blk.norm1.eps, d ** -0.5,
                             W=w, D=d, KV_STRIDE=2 * nb * w, HAS_KEY_MASK=key_mask is not None, BM=t.m,
                             BK=t.k, BD=max(16, triton.next_power_of_2(d)), BL=t.l, BN=t.n, **common)
                k += 1
                self._launch(_ffn, (triton.cdiv(self.ffn, t.f), rows, b),
                             x[k % 3], x[(k + 1) % 3], x[(k + 2) % 3], blk.norm2.weight, blk.norm2.bias,
                             blk.fc1.weight, self.time_bias[i, j], blk.fc2.weight, blk.fc2.bias, m, blk.norm2.eps,
                             W=w, F=self.ffn, BM=t.m, BK=t.k, BF=t.f, BN=t.n, **common)
                k += 1
            self._launch(_pool, (triton.cdiv(w, t.n), triton.cdiv(m, t.pool_rows), b),
                         x[k % 3], x[(k + 2) % 3], head.norm_out.weight, head.norm_out.bias, head.pool.weight,
                         head.pool.bias, pooled, m, head.norm_out.eps, t.pool_rows, W=w, BK=t.k, BN=t.n)
            k += 1
            hidden = head.out_fc1.out_features
            self._launch(_out_mlp, (triton.cdiv(hidden, t.f), b),
                         pooled, head.out_fc1.weight, head.out_fc1.bias, head.out_fc2.weight, head.out_fc2.bias,
                         velocity[nxt], w, hidden, m * a, BS=t.f, BK=t.k, BN=t.n)
        last = self.steps % 2
        out = euler[last] + dt * velocity[last].view(b, m, a) * action_mask[:, None, :]
        return out * action_mask[:, None, :]
