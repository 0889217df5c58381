"""Triton kernels for depthwise 2-D convolution: forward, input gradient and weight gradient.

    y[n, c, oh, ow] = b[c] + sum_{kh, kw} x[n, c, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW] * w[c, kh, kw]

Any kernel size (odd or even, square or band such as 1x11), stride, zero padding and dilation; fp32, fp16
and bf16 storage with fp32 accumulation; any input strides, so NCHW and channels_last need no copy (the
output takes the input's layout, as cuDNN does). Outputs are written exactly once, so no zero-fill.

* forward: a program owns a [BLOCK_C channels x BLOCK_H x BLOCK_W outputs] tile of one image and loops
  over the taps; the shifted input tiles of neighbouring taps overlap, so repeated reads come from L1/L2.
* input gradient: the transposed gather. For stride s an input row only receives taps with
  kh*DH = ih + PH (mod s), an arithmetic progression of kh; one launch per residue class ("phase") of
  (ih mod SH, iw mod SW) loops over exactly that phase's taps (no per-element stride test, no wasted
  loads; stride 1 is a single phase with every tap).
* weight gradient: a program owns [BLOCK_C channels x all kw taps] of one kernel row kh and reduces over
  a slice of the N*OH*OW output positions, BLOCK_Q at a time (flattened, so small maps such as 7x7 still
  fill the tile); per-slice partial sums (fp32) are added on the host, which keeps the result
  deterministic (no atomics).

This module imports triton; `lkconv.kernels.ops` imports it lazily, on the first call that runs a kernel.
"""
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from ..backends import check_depthwise_inputs
from .geometry import depthwise_output_shape, empty_in_layout_of, is_channels_last
from .launch import TileConfig, default_tile, device_guard, interpreting, next_pow2, require_kernel_device

__all__ = [
    'WeightGradConfig', 'default_weight_grad_config', 'depthwise_forward', 'depthwise_input_grad',
    'depthwise_weight_grad',
]


# ------------------------------------------------------------------------------------------- kernels

@triton.jit
def _depthwise_fwd_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr,
        C, H, W, OH, OW, tiles_w,
        sxn, sxc, sxh, sxw, syn, syc, syh, syw,
        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
        PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
        HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    tile = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n = tl.program_id(2).to(tl.int64)
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    oh = (tile // tiles_w) * BLOCK_H + p // BLOCK_W
    ow = (tile % tiles_w) * BLOCK_W + p % BLOCK_W
    c_ok = c < C
    x_base = x_ptr + n * sxn + c[:, None] * sxc
    w_base = w_ptr + c * (KH * KW)
    ih0 = oh * SH - PH
    iw0 = ow * SW - PW
    acc = tl.zeros((BLOCK_C, BLOCK_H * BLOCK_W), dtype=tl.float32)
    for kh in range(KH):
        ih = ih0 + kh * DH
        row_mask = c_ok[:, None] & ((ih >= 0) & (ih < H))[None, :]
        x_row = x_base + (ih * sxh)[None, :]
        for kw in range(KW):
            iw = iw0 + kw * DW
            mask = row_mask & ((iw >= 0) & (iw < W))[None, :]
            xv = tl.load(x_row + (iw * sxw)[None, :], mask=mask, other=0.0)
            wv = tl.load(w_base + (kh * KW + kw), mask=c_ok, other=0.0)
            acc += xv.to(tl.float32) * wv.to(tl.float32)[:, None]
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[:, None]
    out_ok = (oh < OH) & (ow < OW)
    y = y_ptr + n * syn + c[:, None] * syc + (oh * syh + ow * syw)[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=c_ok[:, None] & out_ok[None, :])


@triton.jit
def _depthwise_dgrad_kernel(
        g_ptr, w_ptr, dx_ptr,
        C, H, W, OH, OW, RH, RW, tiles_w,
        sgn, sgc, sgh, sgw, sdn, sdc, sdh, sdw,
        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
        TAPS_H: tl.constexpr, KH0: tl.constexpr, KH_STEP: tl.constexpr, OH0: tl.constexpr, OH_STEP: tl.constexpr,
        TAPS_W: tl.constexpr, KW0: tl.constexpr, KW_STEP: tl.constexpr, OW0: tl.constexpr, OW_STEP: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    # Input positions ih = RH + SH*i, iw = RW + SW*j of one phase. Tap t of the phase's arithmetic
    # progression kh = KH0 + t*KH_STEP reads output row oh = i + OH0 - t*OH_STEP (same for columns).
    tile = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n = tl.program_id(2).to(tl.int64)
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    i = (tile // tiles_w) * BLOCK_H + p // BLOCK_W
    j = (tile % tiles_w) * BLOCK_W + p % BLOCK_W
    c_ok = c < C
    g_base = g_ptr + n * sgn + c[:, None] * sgc
    w_base = w_ptr + c * (KH * KW)
    acc = tl.zeros((BLOCK_C, BLOCK_H * BLOCK_W), dtype=tl.float32)
    for th in range(TAPS_H):
        oh = i + (OH0 - th * OH_STEP)
        row_mask = c_ok[:, None] & ((oh >= 0) & (oh < OH))[None, :]
        g_row = g_base + (oh * sgh)[None, :]
        for tw in range(TAPS_W):
            ow = j + (OW0 - tw * OW_STEP)
            mask = row_mask & ((ow >= 0) & (ow < OW))[None, :]
            gv = tl.load(g_row + (ow * sgw)[None, :], mask=mask, other=0.0)
            wv = tl.load(w_base + ((KH0 + th * KH_STEP) * KW + KW0 + tw * KW_STEP), mask=c_ok, other=0.0)
            acc += gv.to(tl.float32) * wv.to(tl.float32)[:, None]
    ih = RH + SH * i
    iw = RW + SW * j
    dx = dx_ptr + n * sdn + c[:, None] * sdc + (ih * sdh + iw * sdw)[None, :]
    tl.store(dx, acc.to(dx_ptr.dtype.element_ty), mask=c_ok[:, None] & ((ih < H) & (iw < W))[None, :])


@triton.jit
def _depthwise_wgrad_kernel(
        g_ptr, x_ptr, part_ptr,
        C, H, W, OH, OW, outputs, per_split,
        sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
        PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
        BLOCK_C: tl.constexpr, KW_PAD: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    # partial[split, c, kh, kw] = sum over this split's output positions q = (n, oh, ow) of g[q] * x[q + tap]
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    kh = tl.program_id(1)
    split = tl.program_id(2)
    kw = tl.arange(0, KW_PAD)
    c_ok = c < C
    kw_ok = kw < KW
    iw_tap = kw * DW - PW
    acc = tl.zeros((BLOCK_C, KW_PAD), dtype=tl.float32)
    q_start = split * per_split
    q_end = tl.minimum(q_start + per_split, outputs)
    for q0 in range(q_start, q_end, BLOCK_Q):
        q = q0 + tl.arange(0, BLOCK_Q)
        n = (q // (OH * OW)).to(tl.int64)
        oh = (q // OW) % OH
        ow = q % OW
        ih = oh * SH - PH + kh * DH
        q_ok = q < q_end
        gv = tl.load(g_ptr + c[:, None] * sgc + (n * sgn + oh * sgh + ow * sgw)[None, :],
                     mask=c_ok[:, None] & q_ok[None, :], other=0.0)
        iw = (ow * SW)[None, :] + iw_tap[:, None]  # (KW_PAD, BLOCK_Q)
        x_ok = kw_ok[:, None] & (q_ok & (ih >= 0) & (ih < H))[None, :] & (iw >= 0) & (iw < W)
        x_off = (n * sxn + ih * sxh)[None, :] + iw * sxw
        xv = tl.load(x_ptr + c[:, None, None] * sxc + x_off[None, :, :],
                     mask=c_ok[:, None, None] & x_ok[None, :, :], other=0.0)
        acc += tl.sum(xv.to(tl.float32) * gv.to(tl.float32)[:, None, :], axis=2)
    part = part_ptr + split.to(tl.int64) * C * KH * KW + c[:, None] * (KH * KW) + kh * KW + kw[None, :]
    tl.store(part, acc, mask=c_ok[:, None] & kw_ok[None, :])


# ------------------------------------------------------------------------------------ launch configs

@dataclass(frozen=True)
class WeightGradConfig:
    """Weight-gradient tile (channels x flattened output positions; all kw taps at once) and its slices."""
    block_c: int
    block_q: int
    splits: int
    num_warps: int = 4


# weight-gradient tile: channels x kw taps x output positions
_GPU_WGRAD_TILE, _CPU_WGRAD_TILE = 4096, 16384


def default_weight_grad_config(c: int, kh: int, kw: int, outputs: int, channels_last: bool,
                               device: torch.device) -> WeightGradConfig:
    on_gpu = device.type == 'cuda' and not interpreting()
    budget = _GPU_WGRAD_TILE if on_gpu else _CPU_WGRAD_TILE
    per_kw = max(1, budget // next_pow2(kw))
    # channels_last: a warp reads consecutive channels; NCHW: consecutive output positions
    bc = min(next_pow2(c), 32 if channels_last else 4, per_kw) if on_gpu else min(next_pow2(c), 16)
    bq = min(next_pow2(outputs), max(1, per_kw // bc))
    programs = triton.cdiv(c, bc) * kh
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count if on_gpu else 1
    splits = max(1, min(triton.cdiv(outputs, bq), triton.cdiv(target, programs)))
    return WeightGradConfig(bc, bq, splits)


# ------------------------------------------------------------------------------------------ launchers

def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    check_depthwise_inputs(x, weight)
    require_kernel_device(x)


def _geometry(kernel_size, stride, padding, dilation):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    return dict(KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw, DH=dh, DW=dw)


def depthwise_forward(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        stride: Sequence[int],
        padding: Sequence[int],
        dilation: Sequence[int],
        config: Optional[TileConfig] = None,
) -> torch.Tensor:
    _check(x, weight)
    n, c, oh, ow = depthwise_output_shape(x.shape, weight.shape[2:], stride, padding, dilation)
    y = empty_in_layout_of(x, (n, c, oh, ow), x.dtype)
    if y.numel() == 0:
        return y
    cfg = config or default_tile(c, oh, ow, is_channels_last(x))
    tiles_w = triton.cdiv(ow, cfg.block_w)
    grid = (triton.cdiv(oh, cfg.block_h) * tiles_w, triton.cdiv(c, cfg.block_c), n)
    w = weight.reshape(c, -1).contiguous()
    b = bias.contiguous() if bias is not None else w  # any pointer; never read without HAS_BIAS
    with device_guard(x):
        _depthwise_fwd_kernel[grid](
            x, w, b, y, c, x.shape[2], x.shape[3], oh, ow, tiles_w, *x.stride(), *y.stride(),
            **_geometry(weight.shape[2:], stride, padding, dilation), HAS_BIAS=bias is not None,
            BLOCK_C=cfg.block_c, BLOCK_H=cfg.block_h, BLOCK_W=cfg.block_w, num_warps=cfg.num_warps,
        )
    return y


def _phase_taps(residue: int, kernel: int, stride: int, padding: int, dilation: int):
    """Taps that reach input positions = residue (mod stride), as an arithmetic progression.

    Input position i*stride + residue is read by output o with o*stride = i*stride + residue + padding - k*dilation,
    so tap k qualifies iff k*dilation = residue + padding (mod stride); those k are k0, k0 + step, ...
    Returns (count, k0, step, o0, o_step): tap t is k0 + t*step and reads output i + o0 - t*o_step.
    """
    valid = [k for k in range(kernel) if (residue + padding - k * dilation) % stride == 0]
    if not valid:
        return 0, 0, 1, 0, 0
    k0 = valid[0]
    step = valid[1] - k0 if len(valid) > 1 else 1
    return len(valid), k0, step, (residue + padding - k0 * dilation) // stride, step * dilation // stride


def depthwise_input_grad(
        grad: torch.Tensor,
        weight: torch.Tensor,
        input_shape: Sequence[int],
        stride: Sequence[int],
        padding: Sequence[int],
        dilation: Sequence[int],
        config: Optional[TileConfig] = None,
) -> torch.Tensor:
    n, c, h, w = input_shape
    _check(grad, weight)
    dx = empty_in_layout_of(grad, input_shape, grad.dtype)
    if dx.numel() == 0:
        return dx
    (kh, kw), (sh, sw) = weight.shape[2:], stride
    wt = weight.reshape(c, -1).contiguous()
    # one launch per phase (ih mod SH, iw mod SW): all taps of a phase are valid for its whole tile
    for rh in range(sh):
        taps_h = _phase_taps(rh, kh, sh, padding[0], dilation[0])
        rows = triton.cdiv(h - rh, sh)
        for rw in range(sw):
            taps_w = _phase_taps(rw, kw, sw, padding[1], dilation[1])
            cols = triton.cdiv(w - rw, sw)
            if rows <= 0 or cols <= 0:
                continue
            cfg = config or default_tile(c, rows, cols, is_channels_last(grad))
            tiles_w = triton.cdiv(cols, cfg.block_w)
            grid = (triton.cdiv(rows, cfg.block_h) * tiles_w, triton.cdiv(c, cfg.block_c), n)
            with device_guard(grad):
                _depthwise_dgrad_kernel[grid](
                    grad, wt, dx, c, h, w, grad.shape[2], grad.shape[3], rh, rw, tiles_w,
                    *grad.stride(), *dx.stride(), KH=kh, KW=kw, SH=sh, SW=sw,
                    TAPS_H=taps_h[0], KH0=taps_h[1], KH_STEP=taps_h[2], OH0=taps_h[3], OH_STEP=taps_h[4],
                    TAPS_W=taps_w[0], KW0=taps_w[1], KW_STEP=taps_w[2], OW0=taps_w[3], OW_STEP=taps_w[4],
                    BLOCK_C=cfg.block_c, BLOCK_H=cfg.block_h, BLOCK_W=cfg.block_w, num_warps=cfg.num_warps,
                )
    return dx


def depthwise_weight_grad(
        grad: torch.Tensor,
        x: torch.Tensor,
        weight_shape: Sequence[int],
        stride: Sequence[int],
        padding: Sequence[int],
        dilation: Sequence[int],
        config: Optional[WeightGradConfig] = None,
) -> torch.Tensor:
    c, _, kh, kw = weight_shape
    n, _, oh, ow = grad.shape
    require_kernel_device(x)
    if grad.numel() == 0:
        return torch.zeros(tuple(weight_shape), dtype=x.dtype, device=x.device)
    outputs = n * oh * ow
    cfg = config or default_weight_grad_config(c, kh, kw, outputs, is_channels_last(x), x.device)
    # slices are whole multiples of BLOCK_Q so that only the last block of the last slice is ragged
    per_split = triton.cdiv(triton.cdiv(outputs, cfg.splits), cfg.block_q) * cfg.block_q
    splits = triton.cdiv(outputs, per_split)
    partial = torch.empty((splits, c, kh, kw), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(c, cfg.block_c), kh, splits)
    with device_guard(x):
        _depthwise_wgrad_kernel[grid](
            grad, x, partial, c, x.shape[2], x.shape[3], oh, ow, outputs, per_split,
            *grad.stride(), *x.stride(), **_geometry((kh, kw), stride, padding, dilation),
            BLOCK_C=cfg.block_c, KW_PAD=next_pow2(kw), BLOCK_Q=cfg.block_q, num_warps=cfg.num_warps,
        )
    return partial.sum(0).reshape(c, 1, kh, kw).to(x.dtype)
