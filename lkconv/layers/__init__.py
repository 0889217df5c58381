"""Shared building blocks of the lkconv model families (one concept per file)."""
from .conv_bn import ConvBn
from .depthwise_conv import (
    DepthwiseConv2d, depthwise_conv2d, get_depthwise_backend, list_depthwise_backends, register_depthwise_backend,
    set_depthwise_backend,
)
from .dilated_reparam import DILATED_BRANCHES, DilatedReparamBlock
from .decomposed_large_kernel import DecomposedLargeKernelConv
from .reparam_large_kernel import ReparamLargeKernelConv
from .grn import GlobalResponseNormNHWC
from .inception_dwconv import InceptionDWConv2d
from .large_kernel_attention import LargeKernelAttention
from .attention_bias import AttentionBias2d, relative_bias_index
from .ls_conv import LargeKernelPerception, LSConv
from .ska import (
    SKA, SKA_OP, get_ska_backend, list_ska_backends, register_ska_backend, set_ska_backend, small_kernel_aggregation,
)
from ..backends import layer_backends
from .reparam import conv_with_weights, dilate_kernel, fuse_bn_scale, fuse_conv_bn, merge_kernels, pad_kernel
from .fdconv import (FDConv, convert_state_dict_to_fdconv, convert_to_fdconv, fdconv_applies, official_fdconv_key,
                     to_fdconv)
