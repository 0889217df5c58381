"""Optional Triton GPU kernels for the operations these models are slow at in PyTorch.

* `depthwise_triton`: depthwise conv2d forward / input grad / weight grad (any kernel, stride, dilation,
  band kernels; fp32/fp16/bf16; NCHW and channels_last);
* `ska_triton`: LSNet's small-kernel aggregation forward / input grad / weight grad;
* `ops`: the kernels as `torch.library` custom ops (fake implementations for torch.compile, autograd,
  autocast) and the backend functions;
* `selection`: the rule, a table of measured speed-ups, that decides when 'auto' uses them;
* `geometry`: output shapes and memory layouts shared by the launchers and the fake implementations.

Importing this package registers the kernels as the 'triton' backend of the depthwise conv and SKA
registries in `lkconv.backends` (`import lkconv` does so once timm is loaded). Importing it, `ops` or
`selection` never imports triton; the kernel modules are loaded by the first call that runs a kernel,
which 'auto' only makes for CUDA tensors. On CPU they run under Triton's interpreter when
TRITON_INTERPRET=1 is set before triton is imported (that is how the tests check them).
"""
from ..backends import DEPTHWISE_BACKENDS, SKA_BACKENDS
from .ops import KERNEL_DTYPES, triton_depthwise_conv2d, triton_small_kernel_aggregation
from .selection import add_speedups, use_triton_depthwise, use_triton_ska

__all__ = [
    'KERNEL_DTYPES', 'add_speedups', 'triton_depthwise_conv2d', 'triton_small_kernel_aggregation',
    'use_triton_depthwise', 'use_triton_ska',
]

DEPTHWISE_BACKENDS.register('triton', triton_depthwise_conv2d, use_triton_depthwise)
SKA_BACKENDS.register('triton', triton_small_kernel_aggregation, use_triton_ska)
