"""Swappable compute: the registry of an operation's implementations, and the input contract they share.

Two operations of `lkconv.layers` have several implementations (backends): the depthwise convolution
(`DEPTHWISE_BACKENDS`) and LSNet's small-kernel aggregation (`SKA_BACKENDS`). Each backend registers
itself where it is defined, with a function that computes the operation and a `supports` predicate that
says, per call, whether it can and should run it (device, dtype, layout, shape): the PyTorch
implementations in `lkconv.layers`, the Triton kernels in `lkconv.kernels` when that package is imported.
A registry's selection is 'auto' (the highest-priority backend whose `supports` accepts the call) or one
backend forced by name for every call.

The registries live here, below both packages, so that the kernels register themselves without the
layers importing them. So does the shape contract every backend may rely on (`check_depthwise_inputs`,
`check_ska_inputs`): the layers check a call once before dispatching it, and the kernels check direct
calls with the same function. Imports torch only.
"""
import math
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional

import torch

__all__ = [
    'AUTO', 'Backend', 'Backends', 'DEPTHWISE_BACKENDS', 'SKA_BACKENDS', 'layer_backends', 'check_depthwise_inputs',
    'check_ska_inputs',
]

AUTO = 'auto'


@dataclass(frozen=True)
class Backend:
    """One implementation: `fn(*args)` computes the operation, `supports(*args)` says whether 'auto' uses it."""
    name: str
    fn: Callable[..., torch.Tensor]
    supports: Callable[..., bool]
    priority: int


class Backends:
    """The registered implementations of one operation, and which of them runs it.

    `name` is the operation as error messages call it ('depthwise', 'SKA'). `supports_args` maps a call's
    arguments to those of the `supports` predicates, where they take fewer (default: the same).
    """

    def __init__(self, name: str, supports_args: Optional[Callable[..., tuple]] = None):
        self.name = name
        self._supports_args = supports_args or (lambda *args: args)
        self._backends: List[Backend] = []  # highest priority first
        self._selected = AUTO

    def register(self, name: str, fn: Callable[..., torch.Tensor], supports: Callable[..., bool],
                 priority: int = 10) -> None:
        """Add (or replace) a backend. In 'auto' mode the highest-priority backend that supports a call runs it."""
        if name == AUTO:
            raise ValueError(f"'{AUTO}' is the automatic selection, not a backend name")
        backends = [b for b in self._backends if b.name != name] + [Backend(name, fn, supports, priority)]
        self._backends = sorted(backends, key=lambda b: -b.priority)

    def unregister(self, name: str) -> None:
        """Remove a backend; if it was the one selected, the selection returns to 'auto'."""
        self._require(name)
        self._backends = [b for b in self._backends if b.name != name]
        if self._selected == name:
            self._selected = AUTO

    def names(self) -> List[str]:
        """The registered backends, highest priority first."""
        return [b.name for b in self._backends]

    def __iter__(self) -> Iterator[Backend]:
        return iter(list(self._backends))

    def select(self, name: str = AUTO) -> None:
        """Force one backend for every call, or restore 'auto'."""
        if name != AUTO:
            self._require(name)
        self._selected = name

    def selected(self) -> str:
        return self._selected

    @contextmanager
    def using(self, name: str) -> Iterator[None]:
        """Select `name` for the block; the previous selection is restored afterwards, also when it raises."""
        previous = self._selected
        self.select(name)
        try:
            yield
        finally:
            self._selected = previous

    def dispatch(self, *args) -> torch.Tensor:
        """Run the operation on `args` with the selected backend (in 'auto': the first that supports them)."""
        auto = self._selected == AUTO
        query = self._supports_args(*args) if auto else ()
        for backend in self._backends:
            if backend.name == self._selected or (auto and backend.supports(*query)):
                return backend.fn(*args)
        raise RuntimeError(f'No registered {self.name} backend runs this call (registered: {self._listing()})')

    def _require(self, name: str) -> None:
        if name not in self.names():
            raise ValueError(f"Unknown {self.name} backend '{name}'; registered: {self._listing()}")

    def _listing(self) -> str:
        return ', '.join([AUTO] + self.names())


def _without_bias(x, weight, bias, stride, padding, dilation) -> tuple:
    """A depthwise backend's `supports` is asked without the bias."""
    return x, weight, stride, padding, dilation


# fn(x, weight, bias, stride, padding, dilation); supports(x, weight, stride, padding, dilation)
DEPTHWISE_BACKENDS = Backends('depthwise', supports_args=_without_bias)
# fn(x, weight); supports(x, weight)
SKA_BACKENDS = Backends('SKA')


@contextmanager
def layer_backends(depthwise: Optional[str] = None, ska: Optional[str] = None) -> Iterator[None]:
    """Run the block with these backends (None: leave that one as it is); the previous selection is
    restored afterwards, also when the block raises or a name is unknown."""
    with ExitStack() as stack:
        if depthwise is not None:
            stack.enter_context(DEPTHWISE_BACKENDS.using(depthwise))
        if ska is not None:
            stack.enter_context(SKA_BACKENDS.using(ska))
        yield


# ------------------------------------------------------------------------------------ input contracts

def check_depthwise_inputs(x: torch.Tensor, weight: torch.Tensor) -> None:
    """x (N, C, H, W) and a depthwise weight (C, 1, KH, KW): one filter per channel."""
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[0] != x.shape[1]:
        raise ValueError(f'depthwise conv expects x (N, C, H, W) and weight (C, 1, KH, KW), '
                         f'got {list(x.shape)} and {list(weight.shape)}')


def check_ska_inputs(x: torch.Tensor, weight: torch.Tensor) -> int:
    """x (B, C, H, W) and per-pixel kernels weight (B, G, K*K, H, W) with odd K and C a multiple of G; returns K."""
    if x.dim() != 4 or weight.dim() != 5:
        raise ValueError(f'SKA expects x (B, C, H, W) and weight (B, G, K*K, H, W), '
                         f'got {list(x.shape)} and {list(weight.shape)}')
    b, c, h, w = x.shape
    if weight.shape[0] != b or weight.shape[3] != h or weight.shape[4] != w or c % weight.shape[1] != 0:
        raise ValueError(f'SKA weight {list(weight.shape)} does not fit input {list(x.shape)} '
                         f'(batch and spatial size must match, C must be a multiple of G)')
    taps = weight.shape[2]
    k = int(round(math.sqrt(taps)))
    if k * k != taps or k % 2 == 0:
        raise ValueError(f'SKA weight must have an odd K*K taps on dim 2, got {taps}')
    return k
