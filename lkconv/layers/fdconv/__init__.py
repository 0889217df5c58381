"""FDConv (Frequency Dynamic Convolution, Chen et al., CVPR 2025) as one package.

* `conv`: the `FDConv` layer, a drop-in `nn.Conv2d` whose weight lives in the Fourier domain;
* `weight`: the Fourier parameterisation and the synthesis of per-sample weights;
* `ksm`: Kernel Spatial Modulation (global and local attention over the weight);
* `fbm`: Frequency Band Modulation of the feature map;
* `convert`: turning any model's convolutions (and their state dicts) into FDConv.
"""
from .conv import FDConv, fdconv_applies, official_fdconv_key
from .convert import convert_state_dict_to_fdconv, convert_to_fdconv, to_fdconv

__all__ = ['FDConv', 'fdconv_applies', 'official_fdconv_key', 'to_fdconv', 'convert_to_fdconv',
           'convert_state_dict_to_fdconv']
