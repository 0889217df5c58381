"""Test-time inference as the official OpenMMLab configs run it: the test pipeline's resize, whole-image or
sliding-window inference, and the logits resized back to the image.

References (Apache-2.0): mmcv `image/geometric.py` (`rescale_size`, `imresize_to_multiple`), mmseg 0.x
`datasets/pipelines/transforms.py` (`Resize` with `keep_ratio`, `ResizeToMultiple`) and
`models/segmentors/encoder_decoder.py` (`whole_inference`, `slide_inference`).

The pipeline resizes a 0..255 uint8 image with OpenCV and rounds it back to uint8 after each resize; here a
float image is resized with `F.interpolate` (bilinear, half-pixel centres, no antialiasing: OpenCV's
`INTER_LINEAR` rule) and not rounded, so the network input differs from mmseg's by that rounding only.
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from .heads import resize

__all__ = ['InferenceConfig', 'inference_sizes', 'resize_for_inference', 'slide_inference', 'resize_logits']

MODES = ('whole', 'slide')


@dataclass(frozen=True)
class InferenceConfig:
    """How a segmentor is run on an image at test time (a config's test pipeline and `test_cfg`).

    Attributes:
        scale: (long side, short side) the image is resized to fit keeping its aspect ratio (mmseg's
            `Resize(img_scale=scale, keep_ratio=True)`: the factor is min(long / long side, short / short side),
            so small images are enlarged); None keeps the image's size.
        size_divisor: the resized image is then resized up to the next multiple of it (`ResizeToMultiple`);
            None: no such step.
        mode: 'whole' (the network sees the whole resized image) or 'slide' (windows of `crop_size`,
            `stride` apart, their logits averaged where they overlap).
        crop_size, stride: (height, width) of the sliding windows and of their steps.
    """
    scale: Optional[Tuple[int, int]] = (2048, 512)
    size_divisor: Optional[int] = None
    mode: str = 'whole'
    crop_size: Tuple[int, ...] = ()
    stride: Tuple[int, ...] = ()

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got '{self.mode}'")
        if self.mode == 'slide' and (len(self.crop_size) != 2 or len(self.stride) != 2):
            raise ValueError(f'slide inference needs crop_size and stride as (height, width), '
                             f'got crop_size={self.crop_size} and stride={self.stride}')


def inference_sizes(height: int, width: int, config: InferenceConfig) -> Tuple[Tuple[int, int], ...]:
    """The sizes (H, W) an image of `height` x `width` is resized to, in order: by `scale` keeping the aspect
    ratio (mmcv rounds half up), then up to a multiple of `size_divisor`. Empty when neither applies."""
    sizes = []
    if config.scale is not None:
        factor = min(max(config.scale) / max(height, width), min(config.scale) / min(height, width))
        height, width = int(height * factor + 0.5), int(width * factor + 0.5)
        sizes.append((height, width))
    if config.size_divisor:
        divisor = config.size_divisor
        height, width = math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor
        sizes.append((height, width))
    return tuple(sizes)


def resize_for_inference(images: torch.Tensor, config: InferenceConfig) -> torch.Tensor:
    """Images (N, C, H, W) resized as the test pipeline resizes them (`inference_sizes`), one resize per step."""
    for size in inference_sizes(images.shape[-2], images.shape[-1], config):
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode='bilinear', align_corners=False)
    return images


def slide_inference(
        logits_fn: Callable[[torch.Tensor], torch.Tensor],
        images: torch.Tensor,
        num_classes: int,
        crop_size: Tuple[int, int],
        stride: Tuple[int, int],
) -> torch.Tensor:
    """mmseg's sliding-window inference: `logits_fn` (images -> logits at their size) on windows of `crop_size`
    placed `stride` apart (the last window of a row or column ends at the image's border; an image smaller than
    a window is one window), logits summed where windows overlap and divided by the number of windows."""
    (crop_h, crop_w), (stride_h, stride_w) = crop_size, stride
    batch, _, height, width = images.shape
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    logits = images.new_zeros((batch, num_classes, height, width))
    counts = images.new_zeros((1, 1, height, width))
    for row in range(rows):
        for col in range(cols):
            bottom, right = min(row * stride_h + crop_h, height), min(col * stride_w + crop_w, width)
            top, left = max(bottom - crop_h, 0), max(right - crop_w, 0)
            logits[:, :, top:bottom, left:right] += logits_fn(images[:, :, top:bottom, left:right])
            counts[:, :, top:bottom, left:right] += 1
    return logits / counts


def resize_logits(logits: torch.Tensor, size: Tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """Logits resized to `size` (H, W), skipped when they already have it."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return resize(logits, size, align_corners)
