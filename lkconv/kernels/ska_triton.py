"""Triton kernels for LSNet's small-kernel aggregation (SKA): forward, input gradient, weight gradient.

    y[b, c, h, w] = sum_{i, j < K} x[b, c, h + i - P, w + j - P] * wt[b, c mod G, i*K + j, h, w],   P = K // 2

(the definition in `lkconv.layers.ska`). fp32, fp16 and bf16 storage (x and wt may differ) with fp32
accumulation; any strides, so NCHW and channels_last inputs need no copy.

* forward and input gradient: a program owns a [BLOCK_C channels x BLOCK_H x BLOCK_W pixels] tile and loops
  over the K*K taps. The input gradient is the transposed gather
  dx[b, c, y, x] = sum_{i, j} dy[b, c, y - i + P, x - j + P] * wt[b, c mod G, i*K + j, y - i + P, x - j + P].
* weight gradient dwt[b, g, t, h, w] = sum_r dy[b, r*G + g, h, w] * x[b, r*G + g, h + i - P, w + j - P]:
  a program owns [BLOCK_G kernels x all K*K taps x pixels] and loops over the C/G channels sharing a
  kernel, reading each dy element once.

This module imports triton; `lkconv.kernels.ops` imports it lazily, on the first call that runs a kernel.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from ..backends import check_ska_inputs
from .geometry import empty_in_layout_of, is_channels_last
from .launch import TileConfig, default_tile, device_guard, next_pow2, require_kernel_device

__all__ = ['ska_forward', 'ska_input_grad', 'ska_weight_grad']


@triton.jit
def _ska_fwd_kernel(
        x_ptr, w_ptr, y_ptr,
        C, G, H, W, tiles_w,
        sxb, sxc, sxh, sxw, swb, swg, swt, swh, sww, syb, syc, syh, syw,
        K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    tile = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(2).to(tl.int64)
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    h = (tile // tiles_w) * BLOCK_H + p // BLOCK_W
    w = (tile % tiles_w) * BLOCK_W + p % BLOCK_W
    c_ok = c < C
    pix_mask = c_ok[:, None] & ((h < H) & (w < W))[None, :]
    x_base = x_ptr + b * sxb + c[:, None] * sxc
    wt_base = w_ptr + b * swb + (c % G)[:, None] * swg + (h * swh + w * sww)[None, :]
    acc = tl.zeros((BLOCK_C, BLOCK_H * BLOCK_W), dtype=tl.float32)
    for i in range(K):
        ih = h + (i - K // 2)
        row_mask = c_ok[:, None] & ((ih >= 0) & (ih < H))[None, :]
        x_row = x_base + (ih * sxh)[None, :]
        for j in range(K):
            iw = w + (j - K // 2)
            xv = tl.load(x_row + (iw * sxw)[None, :], mask=row_mask & ((iw >= 0) & (iw < W))[None, :], other=0.0)
            wv = tl.load(wt_base + (i * K + j) * swt, mask=pix_mask, other=0.0)
            acc += xv.to(tl.float32) * wv.to(tl.float32)
    y = y_ptr + b * syb + c[:, None] * syc + (h * syh + w * syw)[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=pix_mask)


@triton.jit
def _ska_dgrad_kernel(
        g_ptr, w_ptr, dx_ptr,
        C, G, H, W, tiles_w,
        sgb, sgc, sgh, sgw, swb, swg, swt, swh, sww, sdb, sdc, sdh, sdw,
        K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    tile = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(2).to(tl.int64)
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    h = (tile // tiles_w) * BLOCK_H + p // BLOCK_W
    w = (tile % tiles_w) * BLOCK_W + p % BLOCK_W
    c_ok = c < C
    g_base = g_ptr + b * sgb + c[:, None] * sgc
    wt_base = w_ptr + b * swb + (c % G)[:, None] * swg
    acc = tl.zeros((BLOCK_C, BLOCK_H * BLOCK_W), dtype=tl.float32)
    for i in range(K):
        oh = h + (K // 2 - i)  # the output pixel whose tap (i, j) reads this input pixel
        row_mask = c_ok[:, None] & ((oh >= 0) & (oh < H))[None, :]
        g_row = g_base + (oh * sgh)[None, :]
        wt_row = wt_base + (oh * swh)[None, :]
        for j in range(K):
            ow = w + (K // 2 - j)
            mask = row_mask & ((ow >= 0) & (ow < W))[None, :]
            gv = tl.load(g_row + (ow * sgw)[None, :], mask=mask, other=0.0)
            wv = tl.load(wt_row + ((i * K + j) * swt + ow * sww)[None, :], mask=mask, other=0.0)
            acc += gv.to(tl.float32) * wv.to(tl.float32)
    dx = dx_ptr + b * sdb + c[:, None] * sdc + (h * sdh + w * sdw)[None, :]
    tl.store(dx, acc.to(dx_ptr.dtype.element_ty), mask=c_ok[:, None] & ((h < H) & (w < W))[None, :])


@triton.jit
def _ska_wgrad_kernel(
        g_ptr, x_ptr, dw_ptr,
        C, G, H, W, tiles_w,
        sgb, sgc, sgh, sgw, sxb, sxc, sxh, sxw, sdb, sdg, sdt, sdh, sdw,
        K: tl.constexpr, TAPS_PAD: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_H: tl.constexpr,
        BLOCK_W: tl.constexpr,
):
    tile = tl.program_id(0)
    g = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
    b = tl.program_id(2).to(tl.int64)
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    h = (tile // tiles_w) * BLOCK_H + p // BLOCK_W
    w = (tile % tiles_w) * BLOCK_W + p % BLOCK_W
    t = tl.arange(0, TAPS_PAD)
    g_ok = g < G
    pix_ok = (h < H) & (w < W)
    ih = h[None, :] + (t // K - K // 2)[:, None]  # (TAPS_PAD, pixels)
    iw = w[None, :] + (t % K - K // 2)[:, None]
    tap_ok = (t < K * K)[:, None] & pix_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    x_mask = g_ok[:, None, None] & tap_ok[None, :, :]
    x_off = (ih * sxh + iw * sxw)[None, :, :]
    g_mask = g_ok[:, None] & pix_ok[None, :]
    g_off = (h * sgh + w * sgw)[None, :]
    acc = tl.zeros((BLOCK_G, TAPS_PAD, BLOCK_H * BLOCK_W), dtype=tl.float32)
    for r in range(C // G):  # the channels r*G + g that share kernel g
        c = r * G + g
        gv = tl.load(g_ptr + b * sgb + c[:, None] * sgc + g_off, mask=g_mask, other=0.0)
        xv = tl.load(x_ptr + b * sxb + c[:, None, None] * sxc + x_off, mask=x_mask, other=0.0)
        acc += xv.to(tl.float32) * gv.to(tl.float32)[:, None, :]
    dw = dw_ptr + b * sdb + g[:, None, None] * sdg + t[None, :, None] * sdt + (h * sdh + w * sdw)[None, None, :]
    out_mask = g_ok[:, None, None] & ((t < K * K)[:, None] & pix_ok[None, :])[None, :, :]
    tl.store(dw, acc.to(dw_ptr.dtype.element_ty), mask=out_mask)


# ------------------------------------------------------------------------------------------ launchers

def _check(x: torch.Tensor, weight: torch.Tensor) -> int:
    k = check_ska_inputs(x, weight)
    require_kernel_device(x)
    return k


def _grid(cfg: TileConfig, channels: int, b: int, h: int, w: int):
    tiles_w = triton.cdiv(w, cfg.block_w)
    return (triton.cdiv(h, cfg.block_h) * tiles_w, triton.cdiv(channels, cfg.block_c), b), tiles_w


def ska_forward(x: torch.Tensor, weight: torch.Tensor, config: Optional[TileConfig] = None) -> torch.Tensor:
    k = _check(x, weight)
    b, c, h, w = x.shape
    y = empty_in_layout_of(x, x.shape, x.dtype)
    if y.numel() == 0:
        return y
    cfg = config or default_tile(c, h, w, is_channels_last(x))
    grid, tiles_w = _grid(cfg, c, b, h, w)
    with device_guard(x):
        _ska_fwd_kernel[grid](
            x, weight, y, c, weight.shape[1], h, w, tiles_w, *x.stride(), *weight.stride(), *y.stride(),
            K=k, BLOCK_C=cfg.block_c, BLOCK_H=cfg.block_h, BLOCK_W=cfg.block_w, num_warps=cfg.num_warps,
        )
    return y


def ska_input_grad(grad: torch.Tensor, weight: torch.Tensor, config: Optional[TileConfig] = None) -> torch.Tensor:
    k = _check(grad, weight)
    b, c, h, w = grad.shape
    dx = empty_in_layout_of(grad, grad.shape, grad.dtype)
    if dx.numel() == 0:
        return dx
    cfg = config or default_tile(c, h, w, is_channels_last(grad))
    grid, tiles_w = _grid(cfg, c, b, h, w)
    with device_guard(grad):
        _ska_dgrad_kernel[grid](
            grad, weight, dx, c, weight.shape[1], h, w, tiles_w, *grad.stride(), *weight.stride(), *dx.stride(),
            K=k, BLOCK_C=cfg.block_c, BLOCK_H=cfg.block_h, BLOCK_W=cfg.block_w, num_warps=cfg.num_warps,
        )
    return dx


def ska_weight_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                    config: Optional[TileConfig] = None) -> torch.Tensor:
    """Gradient for `weight` (only its shape, dtype and layout are used)."""
    k = _check(x, weight)
    b, c, h, w = x.shape
    g = weight.shape[1]
    dw = torch.empty_like(weight)
    if dw.numel() == 0:
        return dw
    taps = next_pow2(k * k)
    # the accumulator holds every tap of each pixel: a quarter of a forward tile's pixels keeps it small
    cfg = config or default_tile(g, h, w, is_channels_last(x), shrink=4)
    grid, tiles_w = _grid(cfg, g, b, h, w)
    with device_guard(x):
        _ska_wgrad_kernel[grid](
            grad, x, dw, c, g, h, w, tiles_w, *grad.stride(), *x.stride(), *dw.stride(),
            K=k, TAPS_PAD=taps, BLOCK_G=cfg.block_c, BLOCK_H=cfg.block_h, BLOCK_W=cfg.block_w,
            num_warps=cfg.num_warps,
        )
    return dw
