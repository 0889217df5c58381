"""Shared building blocks of the lkconv model families (one concept per file)."""
from .conv_bn import ConvBn
from .depthwise_conv import (
    DepthwiseConv2d, depthwise_conv2d, get_depthwise_backend, list_depthwise_backends, register_depthwise_backend,
    set_depthwise_backend,
)
from .dilated_reparam import DILATED_BRANCHES, DilatedReparamBlock
from .grn import GlobalResponseNormNHWC
from .reparam import conv_with_weights, dilate_kernel, fuse_bn_scale, fuse_conv_bn, merge_kernels, pad_kernel
