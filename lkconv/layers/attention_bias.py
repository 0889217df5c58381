"""LeViT-style learned relative-position attention bias on a 2-D token grid, with a cache that is never stale.

One learned value per head and per absolute offset (|d_row|, |d_col|) of a `resolution` grid is gathered
into an (heads, N, N) bias over all query/key pairs. For a token grid of another size the gathered bias is
resized bicubically to (heads, N', N'), as the dense-prediction variants of LSNet do.

In eval mode without autograd the result is cached (as timm's LeViT `attention_bias_cache`), keyed by the
grid size and stamped with the table's device, dtype, storage and version counter, so loading weights after
`eval()`, an optimizer step, `.to(dtype)` or `.to(device)` can never return an old bias. `train()` and
`_apply()` also drop the cache to free memory. The result always has the table's dtype (bf16 stays bf16).
"""
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, to_2tuple

__all__ = ['AttentionBias2d', 'relative_bias_index']


def relative_bias_index(resolution: Tuple[int, int], device=None) -> torch.Tensor:
    """(N, N) index of |d_row| * W + |d_col| for every pair of positions of an (H, W) grid, N = H * W."""
    h, w = resolution
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return (rows[:, None] - rows[None, :]).abs() * w + (cols[:, None] - cols[None, :]).abs()


@register_notrace_module  # fx: one leaf call (its output depends on python-level grid sizes and the cache)
class AttentionBias2d(nn.Module):
    """`forward((H, W))` -> (num_heads, H*W, H*W) additive attention bias."""

    def __init__(self, num_heads: int, resolution, device=None, dtype=None):
        super().__init__()
        self.num_heads = num_heads
        self.resolution = to_2tuple(resolution)
        num_offsets = self.resolution[0] * self.resolution[1]
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, num_offsets, device=device, dtype=dtype))
        num_pos = num_offsets
        self.register_buffer(
            'attention_bias_idxs', torch.empty(num_pos, num_pos, device=device, dtype=torch.long), persistent=False)
        self.attention_bias_cache: Dict[str, torch.Tensor] = {}
        self._cache_stamp: Tuple[int, int, str, str] = (-1, -1, '', '')
        self.init_non_persistent_buffers()

    def init_non_persistent_buffers(self) -> None:
        """(Re)compute the index buffer, e.g. after creation on the meta device and `to_empty()`."""
        device = self.attention_bias_idxs.device
        if device.type != 'meta':
            self.attention_bias_idxs.copy_(relative_bias_index(self.resolution, device=device))
        self.attention_bias_cache = {}

    def train(self, mode: bool = True):
        super().train(mode)
        self.attention_bias_cache = {}
        return self

    def _apply(self, fn, *args, **kwargs):
        self.attention_bias_cache = {}
        return super()._apply(fn, *args, **kwargs)

    def _compute(self, feat_size: Tuple[int, int]) -> torch.Tensor:
        bias = self.attention_biases[:, self.attention_bias_idxs]
        num_tokens = feat_size[0] * feat_size[1]
        if num_tokens != bias.shape[-1]:
            bias = F.interpolate(
                bias.unsqueeze(0), size=(num_tokens, num_tokens), mode='bicubic', align_corners=False).squeeze(0)
        return bias

    @torch.jit.unused
    def _cached(self, feat_size: Tuple[int, int]) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return self._compute(feat_size)  # no python-side state inside a compiled graph
        table = self.attention_biases
        stamp = (table._version, table.data_ptr(), str(table.device), str(table.dtype))
        if stamp != self._cache_stamp:
            self.attention_bias_cache = {}
            self._cache_stamp = stamp
        key = f'{feat_size[0]}x{feat_size[1]}'
        if key not in self.attention_bias_cache:
            self.attention_bias_cache[key] = self._compute(feat_size)
        return self.attention_bias_cache[key]

    def forward(self, feat_size: Tuple[int, int]) -> torch.Tensor:
        needs_grad = torch.is_grad_enabled() and self.attention_biases.requires_grad
        if torch.jit.is_scripting() or torch.jit.is_tracing() or self.training or needs_grad:
            return self._compute(feat_size)
        return self._cached(feat_size)

    def extra_repr(self) -> str:
        return f'num_heads={self.num_heads}, resolution={self.resolution}'
