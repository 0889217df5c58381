"""Select the compute backends of `lkconv.layers` (depthwise conv, SKA) for the duration of a block."""
from contextlib import contextmanager
from typing import Iterator, Optional

from .depthwise_conv import get_depthwise_backend, set_depthwise_backend
from .ska import get_ska_backend, set_ska_backend

__all__ = ['layer_backends']


@contextmanager
def layer_backends(depthwise: Optional[str] = None, ska: Optional[str] = None) -> Iterator[None]:
    """Run the block with these backends (None: leave that one as it is); the previous selection is
    restored afterwards, also when the block raises or a name is unknown."""
    previous = get_depthwise_backend(), get_ska_backend()
    try:
        if depthwise is not None:
            set_depthwise_backend(depthwise)
        if ska is not None:
            set_ska_backend(ska)
        yield
    finally:
        set_depthwise_backend(previous[0])
        set_ska_backend(previous[1])
