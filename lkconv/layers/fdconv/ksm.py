"""Kernel Spatial Modulation (FDConv, CVPR 2025): attentions that modulate a conv weight per sample.

Both branches read the globally pooled input g (B, Cin, 1, 1):
* `KernelSpatialModulationGlobal`: a small MLP (1x1 conv -> BatchNorm -> StarReLU) with factorised
  heads: per input channel, per output channel, per kernel position, and per frequency band of the
  Fourier weight (`kernel_num` x `param_ratio` values).
* `KernelSpatialModulationLocal`: LayerNorm over the channels, then a 1-D conv along the channel axis
  giving one logit per (output channel, kernel row, kernel column, input channel): a dense
  Cout x Cin x k x k modulation.

All heads start with weights of scale 1e-6 (the official init), so every attention starts near its
neutral value; `FDConv.zero_attention_heads` makes them exactly neutral. The 1x1 convs act on pooled
vectors and run as the linear maps they are.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.metaformer import StarReLU

__all__ = ['KernelSpatialModulationGlobal', 'KernelSpatialModulationLocal', 'ksm_local_kernel_size', 'modulation_act']

_ACTS = ('sigmoid', 'tanh')


def modulation_act(logits: torch.Tensor, act: str, att_multi: float, temperature: float = 1.0) -> torch.Tensor:
    """An attention around 1: sigmoid(z / T) * att_multi, or 1 + tanh(z / T)."""
    if act == 'sigmoid':
        return torch.sigmoid(logits / temperature) * att_multi
    return 1 + torch.tanh(logits / temperature)


def _check_act(name: str, act: str) -> None:
    if act not in _ACTS:
        raise ValueError(f'{name} must be one of {_ACTS}, got {act!r}')


class KernelSpatialModulationGlobal(nn.Module):
    """Global KSM: channel (Cin), filter (Cout), spatial (k*k) and band (kernel_num * param_ratio) attentions.

    The band attention is sigmoid(z / kernel_temp) * 2 / (n * P) (or (1 + tanh) / (n * P)), so that the
    synthesis gain m * n * P brings each band back to scale 1 at init.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int,
            reduction: float = 0.0625,
            kernel_num: int = 4,
            param_ratio: int = 1,
            min_hidden: int = 16,
            temperature: float = 1.0,
            kernel_temperature: float = 1.0,
            att_multi: float = 2.0,
            act: str = 'sigmoid',
            only_kernel_att: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        _check_act('ksm_global_act', act)
        hidden = max(int(in_chs * reduction), min_hidden)
        self.kernel_num = kernel_num
        self.param_ratio = param_ratio
        self.temperature = temperature
        self.kernel_temperature = kernel_temperature
        self.att_multi = att_multi
        self.act_type = act

        self.fc = nn.Conv2d(in_chs, hidden, 1, bias=False, **dd)
        self.norm = nn.BatchNorm2d(hidden, **dd)
        self.act = StarReLU(**dd)
        self.channel_fc = None if only_kernel_att else nn.Conv2d(hidden, in_chs, 1, **dd)
        self.filter_fc = None if only_kernel_att else nn.Conv2d(hidden, out_chs, 1, **dd)
        self.spatial_fc = None if only_kernel_att or kernel_size == 1 else nn.Conv2d(hidden, kernel_size ** 2, 1, **dd)
        self.kernel_fc = nn.Conv2d(hidden, kernel_num * param_ratio, 1, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.fc.weight.is_meta:
            return  # no values to set (and torch's normal_ is slow on meta tensors)
        for conv in (self.fc, self.channel_fc, self.filter_fc, self.spatial_fc, self.kernel_fc):
            if conv is not None:
                nn.init.kaiming_normal_(conv.weight, mode='fan_out', nonlinearity='relu')
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)
        # heads start near zero: every attention starts at its neutral value (the official layer means to
        # do this for filter_fc too, but its check never fires and leaves filter_fc Kaiming-initialised)
        for head in (self.channel_fc, self.filter_fc, self.spatial_fc, self.kernel_fc):
            if head is not None:
                nn.init.normal_(head.weight, std=1e-6)

    def _normalize(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.reshape(hidden.shape[0], -1, 1, 1)
        if self.training and hidden.shape[0] == 1:
            # a single pooled vector has no batch statistics (the official layer raises here): use the running ones
            norm = self.norm
            hidden = F.batch_norm(
                hidden, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0., norm.eps)
        else:
            hidden = self.norm(hidden)
        return hidden.flatten(1)

    def _attention(self, hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return modulation_act(_pointwise(hidden, weight, bias), self.act_type, self.att_multi, self.temperature)

    def forward(
            self, pooled: torch.Tensor
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor], torch.Tensor]:
        """(channel (B, Cin), filter (B, Cout), spatial (B, k*k), band (B, P, n)) attentions; None where absent."""
        if torch.jit.is_scripting():
            return self._attentions(pooled)
        return self._attentions_outside_autocast(pooled)

    @torch.jit.unused
    def _attentions_outside_autocast(
            self, pooled: torch.Tensor
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor], torch.Tensor]:
        """Under autocast, run the MLP in the parameters' dtype instead of float16 / bfloat16.

        In float16 StarReLU's square overflows once a hidden unit passes 256 (inputs far outside the
        BatchNorm statistics), and the heads then turn inf into NaN attentions. The MLP acts on pooled
        vectors, so full precision costs nothing; without autocast this is the plain computation.
        """
        if not isinstance(pooled, torch.Tensor):  # symbolic tracing: a proxy has no device, trace the plain MLP
            return self._attentions(pooled)
        device_type = pooled.device.type
        if not (torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)):
            return self._attentions(pooled)
        with torch.autocast(device_type, enabled=False):
            return self._attentions(pooled.to(self.fc.weight.dtype))

    def _attentions(
            self, pooled: torch.Tensor
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor], torch.Tensor]:
        batch = pooled.shape[0]
        hidden = self.act(self._normalize(_pointwise(pooled.flatten(1), self.fc.weight, None)))
        channel = filt = spatial = None
        if self.channel_fc is not None:
            channel = self._attention(hidden, self.channel_fc.weight, self.channel_fc.bias)
        if self.filter_fc is not None:
            filt = self._attention(hidden, self.filter_fc.weight, self.filter_fc.bias)
        if self.spatial_fc is not None:
            spatial = self._attention(hidden, self.spatial_fc.weight, self.spatial_fc.bias)
        bands = self.kernel_num * self.param_ratio
        logits = _pointwise(hidden, self.kernel_fc.weight, self.kernel_fc.bias)
        logits = logits.reshape(batch, self.param_ratio, self.kernel_num)
        if self.act_type == 'sigmoid':
            band = torch.sigmoid(logits / self.kernel_temperature) * (2. / bands)
        else:
            band = (1 + torch.tanh(logits / self.kernel_temperature)) / bands
        return channel, filt, spatial, band


def _pointwise(vectors: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """A 1x1 conv applied to pooled (B, C) vectors, as the linear map it is (no conv-call overhead)."""
    return F.linear(vectors, weight.flatten(1), bias)


def ksm_local_kernel_size(in_chs: int) -> int:
    """Odd 1-D kernel size growing with log2(Cin) (3 up to 48 channels, 5 to 512, 7 at 1024 and 2048).

    Uses Python's round (half to even), as the official layer does.
    """
    return round(math.log2(in_chs) / 2 + 0.5) // 2 * 2 + 1


class KernelSpatialModulationLocal(nn.Module):
    """Local KSM: LayerNorm(Cin), then Conv1d(1 -> Cout*k*k) sliding along the Cin axis.

    Returns the logits (B, Cout*k*k, Cin); the layer maps them to a (B, Cout, Cin, k, k) modulation.
    """

    def __init__(self, in_chs: int, out_size: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        kernel = ksm_local_kernel_size(in_chs)
        self.norm = nn.LayerNorm(in_chs, **dd)
        self.conv = nn.Conv1d(1, out_size, kernel_size=kernel, padding=(kernel - 1) // 2, bias=False, **dd)
        nn.init.constant_(self.conv.weight, 1e-6)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.norm(pooled.reshape(pooled.shape[0], 1, -1))
        return self.conv(x)
