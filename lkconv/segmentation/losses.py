"""The training loss of the published segmentation configs: mmseg's pixel-wise cross-entropy of each head.

Reference: https://github.com/open-mmlab/mmsegmentation `models/losses/cross_entropy_loss.py` and
`decode_heads/decode_head.py` (`losses`), Apache-2.0.
"""
import torch
import torch.nn.functional as F

from .heads import resize

__all__ = ['IGNORE_INDEX', 'segmentation_loss']

IGNORE_INDEX = 255  # the label of pixels that count for nothing (ADE20K's "other", Cityscapes' void)


def segmentation_loss(
        logits: torch.Tensor,
        target: torch.Tensor,
        ignore_index: int = IGNORE_INDEX,
        avg_non_ignore: bool = False,
        align_corners: bool = False,
) -> torch.Tensor:
    """Cross-entropy of a head's logits (N, K, h, w) against labels (N, H, W), as an mmseg decode head computes it.

    The logits are first resized bilinearly to the labels' size (a head predicts at stride 4 or 16). Pixels
    labelled `ignore_index` contribute zero; the mean is over all pixels, ignored ones included, which is
    mmseg's default (`avg_non_ignore=False`) and what the published models were trained with. With
    `avg_non_ignore=True` it is over the other pixels only, as `torch.nn.functional.cross_entropy` does.
    """
    if target.dim() != 3 or target.shape[0] != logits.shape[0]:
        raise ValueError(f'expected labels of shape (N, H, W) with N = {logits.shape[0]}, '
                         f'got {list(target.shape)}')
    if logits.shape[-2:] != target.shape[-2:]:
        logits = resize(logits, target.shape[-2:], align_corners)
    losses = F.cross_entropy(logits, target.long(), ignore_index=ignore_index, reduction='none')
    if not avg_non_ignore:
        return losses.mean()
    return losses.sum() / (target != ignore_index).sum().clamp(min=1)
