"""Validation of image batches entering a model, with messages that say what is wrong."""
import torch
from timm.layers import register_notrace_function

__all__ = ['check_image_input']


def check_image_input(x: torch.Tensor, in_chans: int, min_size: int) -> torch.Tensor:
    """Return `x` unchanged if it is an (N, in_chans, H, W) batch with H, W >= min_size; raise ValueError otherwise."""
    if x.dim() != 4:
        raise ValueError(f'expected a 4-D (N, C, H, W) image batch, got a tensor of shape {list(x.shape)}')
    if x.shape[1] != in_chans:
        raise ValueError(
            f'expected {in_chans} input channels, got {x.shape[1]} (input shape {list(x.shape)}); '
            f'create the model with in_chans={x.shape[1]} to change its input')
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            f'input of {x.shape[2]}x{x.shape[3]} is too small: this model needs at least {min_size}x{min_size}')
    return x


register_notrace_function(check_image_input)  # timm's fx feature extraction records it as one call
