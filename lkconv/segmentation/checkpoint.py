"""The authors' published segmentation checkpoints (mmseg 0.x files) on their way into a segmentor.

A file is named by a path, or by its published name (`lkconv.zoo.downstream.PUBLISHED`), which is downloaded
into torch.hub's checkpoint folder once. Its `state_dict` holds `backbone.*` (read by timm through the family's
checkpoint filter), `neck.*` (Semantic FPN), `decode_head.*` and `auxiliary_head.*` (read here, strictly).
Everything a user can get wrong (an unknown name, a detection checkpoint, another head, another class count)
is one ValueError line that says what to do instead.
"""
import os
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..models._checkpoint import checkpoint_dir, checkpoint_weights, download_once
from ..utils import did_you_mean
from ..zoo.checkpoints import CheckpointError, load_checkpoint
from ..zoo.downstream import PUBLISHED, DownstreamCheckpoint, find_published
from ..zoo.weights import WeightsUnavailable
from .inference import InferenceConfig

__all__ = ['HEAD_PARTS', 'SEGMENTOR_NAMES', 'resolve_checkpoint', 'read_state_dict', 'head_type_of',
           'load_head_weights', 'inference_config_of']

HEAD_PARTS = ('neck', 'decode_head', 'auxiliary_head')  # the top-level parts loaded here; `backbone` is timm's
SEGMENTOR_NAMES = {'upernet': 'UperNet', 'semantic_fpn': 'SemanticFPN'}  # published `head` -> class
# a key only that head's state_dict has
_HEAD_MARKERS = {'upernet': 'decode_head.psp_modules.', 'semantic_fpn': 'decode_head.scale_heads.'}


def _segmentation_files():
    return [c.file for c in PUBLISHED if c.head in SEGMENTOR_NAMES and c.file]


def _check_head(name: str, record: DownstreamCheckpoint, head_type: str) -> None:
    if record.head not in SEGMENTOR_NAMES:
        raise ValueError(f"'{name}' is a {record.head} detection checkpoint ({record.dataset}); lkconv.segmentation "
                         f"loads segmentation checkpoints: {', '.join(SEGMENTOR_NAMES.values())}")
    if record.head != head_type:
        raise ValueError(f"'{name}' is a {SEGMENTOR_NAMES[record.head]} checkpoint: load it with "
                         f"{SEGMENTOR_NAMES[record.head]}.from_checkpoint")


def _download(record: DownstreamCheckpoint, file: str) -> None:
    try:
        download_once(record.url, file)
    except OSError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        raise WeightsUnavailable(
            f"cannot download '{record.file}' from {record.url} ({reason}); download it elsewhere (see "
            f"{record.page}) and pass its path") from None


def resolve_checkpoint(
        checkpoint: str,
        head_type: str,
        cache_dir: Optional[str] = None,
) -> Tuple[str, Optional[DownstreamCheckpoint]]:
    """(local path, published record or None) for a file path or a published file name.

    A path that exists is used as it is (its record is the published one of that base name, if any). A bare
    published name is looked up in `cache_dir` (default: torch.hub's checkpoint folder) and downloaded there
    when missing. The record must be a segmentation checkpoint of `head_type` ('upernet' / 'semantic_fpn').
    """
    path = os.fspath(checkpoint)
    record = find_published(path)
    if record is not None:
        _check_head(path, record, head_type)
    if os.path.isfile(path):
        return path, record
    if record is None:
        raise ValueError(f"'{path}' is neither a file nor a published segmentation checkpoint"
                         f"{did_you_mean(os.path.basename(path), _segmentation_files())}")
    if os.path.basename(path) != path:
        raise ValueError(f"'{path}' does not exist; pass the name '{record.file}' alone to download the published file")
    if not record.url:
        raise ValueError(f"'{record.file}' has no direct download: download it from {record.page} and pass its path")
    file = os.path.join(cache_dir or checkpoint_dir(), record.file)
    _download(record, file)
    return file, record


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The weights of an mmseg checkpoint (`meta` + `state_dict`, or a bare state_dict) with their mmseg key names."""
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as e:
        raise ValueError(str(e)) from None
    state_dict = checkpoint_weights(checkpoint) if isinstance(checkpoint, dict) else {}
    if not any(k.startswith('decode_head.') for k in state_dict):
        raise ValueError(f"'{path}' is not a segmentation checkpoint: it has no decode_head.* weights "
                         f"(an mmseg checkpoint holds backbone.*, decode_head.* and auxiliary_head.* or neck.*)")
    return state_dict


def head_type_of(state_dict: Dict[str, Any]) -> Optional[str]:
    """'upernet' or 'semantic_fpn' as the decode head's keys say, or None for another head."""
    return next((head for head, marker in _HEAD_MARKERS.items() if any(k.startswith(marker) for k in state_dict)),
                None)


def load_head_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str) -> None:
    """Load the `neck.*`, `decode_head.*` and `auxiliary_head.*` weights of `state_dict` into `model`'s parts of
    those names, strictly: every key of one must be a key of the other, with the same shape. Floating tensors
    are cast to the model's dtype (the published files store float16)."""
    own = {k: v for k, v in model.state_dict().items() if k.split('.')[0] in HEAD_PARTS}
    theirs = {k: v for k, v in state_dict.items() if k.split('.')[0] in HEAD_PARTS}
    missing, unexpected = sorted(own.keys() - theirs.keys()), sorted(theirs.keys() - own.keys())
    wrong_shape = sorted(k for k in own.keys() & theirs.keys() if own[k].shape != theirs[k].shape)
    if missing or unexpected or wrong_shape:
        problems = [f'{len(keys)} {kind} ({", ".join(keys[:3])}{", ..." if len(keys) > 3 else ""})'
                    for kind, keys in (('missing', missing), ('unexpected', unexpected),
                                       ('differently shaped', wrong_shape)) if keys]
        raise ValueError(f"the head weights of '{source}' do not fit this {type(model).__name__}: "
                         f"{' and '.join(problems)} keys")
    for part in HEAD_PARTS:
        module = getattr(model, part, None)
        if module is None:
            continue
        prefix = part + '.'
        weights = {k[len(prefix):]: v.to(own[k].dtype) if v.is_floating_point() else v
                   for k, v in theirs.items() if k.startswith(prefix)}
        module.load_state_dict(weights, strict=True)


def inference_config_of(record: DownstreamCheckpoint) -> InferenceConfig:
    """The test-time settings of a published checkpoint's config."""
    return InferenceConfig(
        scale=tuple(record.test_scale) or None, size_divisor=record.size_divisor, mode=record.test_mode,
        crop_size=tuple(record.slide_crop), stride=tuple(record.slide_stride))
