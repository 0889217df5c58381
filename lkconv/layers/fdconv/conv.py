"""FDConv: Frequency Dynamic Convolution (Chen et al., CVPR 2025, arXiv 2503.18783).

A drop-in for `nn.Conv2d` whose weight is dynamic per sample:
* Fourier Disjoint Weight (`fdconv_weight`): the weight is stored as its 2-D spectrum, split into
  `kernel_num` frequency bands, each scaled by a per-sample attention before the inverse FFT;
* Kernel Spatial Modulation (`fdconv_ksm`): global (per input channel, output channel, kernel
  position) and local (dense Cout x Cin x k x k) attentions multiply the synthesised weight;
* Frequency Band Modulation (`fdconv_fbm`, 3x3 layers): spatially varying gains on the frequency bands
  of the input.
The batch is then convolved in one grouped conv (groups = batch) with its per-sample weights.

As in the official layer, the FD path is used only where it applies: min(Cin, Cout) > 16 and a kernel
size in (1, 3); otherwise the layer is an ordinary `nn.Conv2d` (and keeps its `weight`). This
implementation also requires groups = 1, a square kernel and zero padding for the FD path. FBM applies
to every 3x3 FD layer, strided ones included, as in the official layer, and with `use_fbm_for_stride`
(official option, off by default) also to every strided FD layer of another kernel size.

Given the same parameters it computes the official layer's output (official state_dict keys
`dft_weight`, `KSM_Global.*`, `KSM_Local.*`, `FBM.*` load directly). Deliberate differences:
* the output-filter attention head starts near zero like the other heads (the official init check never
  fires for it, leaving it Kaiming-initialised), so every attention starts near neutral
  (`zero_attention_heads()` makes them exactly neutral; the converter does this by default);
* training with batch size 1 normalises the global KSM branch with the running statistics (the
  official layer raises);
* FFTs always run in float32 and the output follows the input dtype (the official FBM returns float32);
* any `kernel_num` works (bands are near-equal contiguous chunks of the ranked frequencies; the official
  layout needs n to divide their count) and odd Cin*k is reconstructed at its true width;
* `param_ratio` P > 1 copies each start at 1/P of the source weight, so the synthesised weight equals it
  (the official layer starts at P times it); for P = 1 the parameters are the official converter's.
* `param_reduction`, `spatial_freq_decompose`, `convert_param=False` and the unused official options
  (`att_grid`, `use_fdconv_if_stride_in`, `fs_feat`, `global_selection`) are not implemented.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, to_2tuple

from .fbm import FrequencyBandModulation
from .ksm import KernelSpatialModulationGlobal, KernelSpatialModulationLocal, modulation_act
from .weight import fourier_scale, frequency_groups, spatial_to_fourier, synthesize_weight

__all__ = ['FDConv', 'fdconv_applies', 'official_fdconv_key']

_IntOrPair = Union[int, Tuple[int, int]]

# official state_dict names (relative to the layer) -> ours
_OFFICIAL_KEYS = (
    ('dft_weight', 'fourier_weight'),
    ('KSM_Global.bn.', 'ksm_global.norm.'),
    ('KSM_Global.relu.', 'ksm_global.act.'),
    ('KSM_Global.', 'ksm_global.'),
    ('KSM_Local.', 'ksm_local.'),
    ('FBM.freq_weight_conv_list.', 'fbm.band_convs.'),
)


def official_fdconv_key(key: str) -> str:
    """Our name for a key of the official layer's state_dict (relative to the layer); other keys unchanged."""
    for official, ours in _OFFICIAL_KEYS:
        if key.startswith(official):
            return ours + key[len(official):]
    return key


def fdconv_applies(
        in_channels: int,
        out_channels: int,
        kernel_size: _IntOrPair,
        groups: int = 1,
        padding_mode: str = 'zeros',
        use_fdconv_if_c_gt: int = 16,
        use_fdconv_if_k_in: Sequence[int] = (1, 3),
) -> bool:
    """The official activation rule (min channels > 16, kernel size in (1, 3)), plus what the FD path needs:
    groups = 1, a square kernel and zero padding."""
    kh, kw = to_2tuple(kernel_size)
    return (
        min(in_channels, out_channels) > use_fdconv_if_c_gt and kh in tuple(use_fdconv_if_k_in) and kh == kw
        and groups == 1 and padding_mode == 'zeros'
    )


# fx: one leaf call (how the attentions are applied depends on the feature map size, a Python-level branch)
@register_notrace_module
class FDConv(nn.Conv2d):
    """Frequency Dynamic Convolution; same constructor as `nn.Conv2d`, plus the FDConv options.

    Options (official defaults; the paper's ResNet-50 uses kernel_num=64):
        reduction: hidden width of the global KSM branch, max(int(Cin * reduction), 16).
        kernel_num: frequency bands n of the Fourier weight (None: Cout // 2, with
            kernel_temp = sqrt(n * param_ratio)).
        use_fdconv_if_c_gt, use_fdconv_if_k_in: activation rule; otherwise the layer is a plain conv.
        use_fbm_if_k_in: kernel sizes that get Frequency Band Modulation.
        use_fbm_for_stride: also give FBM to every layer with stride > 1, whatever its kernel size.
        kernel_temp, temp: temperatures of the band attention and of the other attentions (temp None:
            kernel_temp).
        att_multi: sigmoid attentions are scaled to (0, att_multi).
        param_ratio: P copies of the Fourier weight, each with its own band attentions.
        ksm_only_kernel_att: only the band attention (no channel / filter / spatial heads).
        use_ksm_local: the dense local KSM branch.
        ksm_local_act, ksm_global_act, fbm_act: 'sigmoid' or 'tanh' (1 + tanh).
        fbm_k_list: FBM low-pass cut-offs 0.5/k; fbm_lowfreq_att: also modulate the lowest band.
    """

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            kernel_size: _IntOrPair,
            stride: _IntOrPair = 1,
            padding: Union[str, _IntOrPair] = 0,
            dilation: _IntOrPair = 1,
            groups: int = 1,
            bias: bool = True,
            padding_mode: str = 'zeros',
            reduction: float = 0.0625,
            kernel_num: Optional[int] = 4,
            use_fdconv_if_c_gt: int = 16,
            use_fdconv_if_k_in: Sequence[int] = (1, 3),
            use_fbm_if_k_in: Sequence[int] = (3,),
            use_fbm_for_stride: bool = False,
            kernel_temp: float = 1.0,
            temp: Optional[float] = None,
            att_multi: float = 2.0,
            param_ratio: int = 1,
            ksm_only_kernel_att: bool = False,
            use_ksm_local: bool = True,
            ksm_local_act: str = 'sigmoid',
            ksm_global_act: str = 'sigmoid',
            fbm_k_list: Sequence[int] = (2, 4, 8),
            fbm_lowfreq_att: bool = False,
            fbm_act: str = 'sigmoid',
            device=None,
            dtype=None,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
            groups=groups, bias=bias, padding_mode=padding_mode, device=device, dtype=dtype)
        self.use_fdconv = fdconv_applies(
            in_channels, out_channels, kernel_size, groups, padding_mode, use_fdconv_if_c_gt, use_fdconv_if_k_in)
        if not self.use_fdconv:
            return  # a plain conv, as the official layer
        if kernel_num is None:
            kernel_num = out_channels // 2
            kernel_temp = math.sqrt(kernel_num * param_ratio)
        if kernel_num < 2 or param_ratio < 1:
            raise ValueError(f'kernel_num must be >= 2 and param_ratio >= 1, got {kernel_num} and {param_ratio}')
        if ksm_local_act not in ('sigmoid', 'tanh'):
            raise ValueError(f"ksm_local_act must be 'sigmoid' or 'tanh', got {ksm_local_act!r}")
        dd = dict(device=device, dtype=dtype)
        k = self.kernel_size[0]
        self.kernel_num = kernel_num
        self.param_ratio = param_ratio
        self.att_multi = att_multi
        self.ksm_local_act = ksm_local_act
        # gain m * n * P cancels the 1/m of the stored spectrum and the 1/(n P) of the band attention
        self.synthesis_gain = float(fourier_scale(out_channels, in_channels) * kernel_num * param_ratio)

        # the weight's device also covers creation under a `torch.device(...)` context
        weight = self.weight.detach()
        self.fourier_weight = nn.Parameter(spatial_to_fourier(weight, param_ratio).to(weight.dtype))
        del self.weight
        self.register_buffer(
            'band_index', frequency_groups(out_channels * k, in_channels * k, kernel_num, device=weight.device),
            persistent=False)
        self.ksm_global = KernelSpatialModulationGlobal(
            in_channels, out_channels, k, reduction=reduction, kernel_num=kernel_num, param_ratio=param_ratio,
            temperature=kernel_temp if temp is None else temp, kernel_temperature=kernel_temp,
            att_multi=att_multi, act=ksm_global_act, only_kernel_att=ksm_only_kernel_att, **dd)
        self.ksm_local = (
            KernelSpatialModulationLocal(in_channels, out_channels * k * k, **dd) if use_ksm_local else None)
        # the official rule: by kernel size, or (optionally) for any strided layer
        use_fbm = (k in tuple(use_fbm_if_k_in) or (use_fbm_for_stride and self.stride[0] > 1)) and len(fbm_k_list) > 0
        self.fbm = FrequencyBandModulation(
            in_channels, fbm_k_list, lowfreq_att=fbm_lowfreq_att, act=fbm_act, **dd) if use_fbm else None

    def init_non_persistent_buffers(self) -> None:
        """Rebuild the band index (e.g. after creation on the meta device and `to_empty`)."""
        if self.use_fdconv:
            k = self.kernel_size[0]
            self.band_index = frequency_groups(
                self.out_channels * k, self.in_channels * k, self.kernel_num, device=self.fourier_weight.device)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if self.use_fdconv:  # accept the official layer's key names
            for key in [k for k in state_dict if k.startswith(prefix)]:
                ours = prefix + official_fdconv_key(key[len(prefix):])
                if ours != key:
                    state_dict[ours] = state_dict.pop(key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.use_fdconv:
            text += f', kernel_num={self.kernel_num}, param_ratio={self.param_ratio}, fbm={self.fbm is not None}'
        return text

    @torch.no_grad()
    def zero_attention_heads(self) -> None:
        """Zero the output layer of every attention branch (KSM heads, KSM local conv, FBM convs).

        Every attention is then exactly neutral (1; 1/(n P) for the bands), so the layer computes a plain
        conv with `spatial_weight()` whatever its input scale. Gradients still reach every head, so
        training moves them off zero at the first step.
        """
        if not self.use_fdconv:
            return
        ksm = self.ksm_global
        for head in (ksm.channel_fc, ksm.filter_fc, ksm.spatial_fc, ksm.kernel_fc):
            if head is not None:
                head.weight.zero_()
                head.bias.zero_()
        if self.ksm_local is not None:
            self.ksm_local.conv.weight.zero_()
        if self.fbm is not None:
            for conv in self.fbm.band_convs:
                conv.weight.zero_()
                conv.bias.zero_()

    def spatial_weight(self) -> torch.Tensor:
        """The static weight (Cout, Cin, k, k) the layer synthesises with every attention at its neutral value."""
        batch_att = torch.full(
            (1, self.param_ratio, self.kernel_num), self.synthesis_gain / (self.kernel_num * self.param_ratio),
            device=self.fourier_weight.device)
        return synthesize_weight(self.fourier_weight, batch_att, self.band_index, self.in_channels,
                                 self.kernel_size[0])[0]

    def _local_attention(self, pooled: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size[0]
        logits = self.ksm_local(pooled)  # (B, Cout*k*k, Cin): channel index o*k*k + row*k + col
        logits = logits.reshape(pooled.shape[0], self.out_channels, k, k, self.in_channels).permute(0, 1, 4, 2, 3)
        return modulation_act(logits, self.ksm_local_act, self.att_multi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # `weight` exists only where the FD path does not apply (TorchScript then compiles only that branch)
        if hasattr(self, 'weight'):
            out = self._conv_forward(x, self.weight, self.bias)
        else:
            out = self._fd_forward(x)
        return out

    def _fd_forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, in_chs, height, width = x.shape
        out_chs, k = self.out_channels, self.kernel_size[0]
        pooled = x.mean(dim=(2, 3), keepdim=True)
        channel_att, filter_att, spatial_att, band_att = self.ksm_global(pooled)

        weight = synthesize_weight(self.fourier_weight, band_att * self.synthesis_gain, self.band_index, in_chs, k)
        if spatial_att is not None:
            weight = weight * spatial_att.reshape(batch, 1, 1, k, k)
        if self.ksm_local is not None:
            weight = weight * self._local_attention(pooled)
        if self.fbm is not None:
            x = self.fbm(x)

        # the per-channel attentions go into the weight or onto the activations, whichever is smaller
        into_weight = out_chs * in_chs * k * k < (in_chs + out_chs) * height * width
        if into_weight:
            if channel_att is not None:
                weight = weight * channel_att.reshape(batch, 1, in_chs, 1, 1)
            if filter_att is not None:
                weight = weight * filter_att.reshape(batch, out_chs, 1, 1, 1)
        elif channel_att is not None:
            x = x * channel_att.reshape(batch, in_chs, 1, 1).to(x.dtype)

        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        out = self._per_sample_conv(x, weight.to(x.dtype))
        if not into_weight and filter_att is not None:
            out = out * filter_att.reshape(batch, out_chs, 1, 1).to(out.dtype)
        bias = self.bias
        if bias is not None:
            out = out + bias.reshape(1, -1, 1, 1).to(out.dtype)
        if channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def _per_sample_conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Convolve each sample with its own weight (B, Cout, Cin, k, k)."""
        batch, in_chs, height, width = x.shape
        out_chs, k = self.out_channels, self.kernel_size[0]
        if k == 1 and self.stride == (1, 1) and self.padding == (0, 0):
            # a pointwise conv is a batched matmul, which is faster than a batch-grouped conv
            out = torch.bmm(weight.reshape(batch, out_chs, in_chs), x.reshape(batch, in_chs, height * width))
            return out.reshape(batch, out_chs, height, width)
        out = F.conv2d(
            x.reshape(1, batch * in_chs, height, width), weight.reshape(batch * out_chs, in_chs, k, k),
            None, self.stride, self.padding, self.dilation, groups=batch)
        return out.reshape(batch, out_chs, out.shape[-2], out.shape[-1])
