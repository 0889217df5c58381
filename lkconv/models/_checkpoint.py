"""Checkpoints on their way into a model: fetching a URL's file, unwrapping the weights, and checking their
classifier size.

`fetch_url_weights` runs before a model whose weights are behind share links is built (`download_once`
downloads them, as it does the published segmentation checkpoints); `unwrap_state_dict` is the first step of every family's `checkpoint_filter_fn` (training-script, OpenMMLab
classification, detection and segmentation files); `check_classifier_size` runs
after the filter for pretrained weights (see `create_backbone`).
"""
import hashlib
import logging
import os
from typing import Any, Dict, Tuple

import torch
import torch.nn as nn
from timm.models import clean_state_dict, get_arch_pretrained_cfgs, resolve_pretrained_cfg

__all__ = [
    'checkpoint_dir', 'checkpoint_weights', 'download_once', 'fetch_url_weights', 'openmmlab_backbone',
    'unwrap_state_dict', 'ClassifierMismatchError', 'check_classifier_size',
]

_logger = logging.getLogger(__name__)


def fetch_url_weights(variant: str, kwargs: Dict[str, Any]) -> None:
    """Download the weights a cfg's URL names to a file of their own, and have timm load them from there.

    For weights behind share links (Google Drive, SURFdrive): their URL paths end in `uc` or `download`,
    the name torch.hub would cache every one of them under; and timm's file loader allow-lists the
    `argparse.Namespace` that official training scripts store in their checkpoints, which its URL loader
    does not. The file is the cfg's own name where its `url` is a `(url, file name)` pair, else
    `<variant>-<hash of the url>.pth`, in torch.hub's checkpoint folder (or `cache_dir`). Nothing happens
    when the weights come from elsewhere (a file, the hub), as timm's source order says.
    """
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                 pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    if cfg.state_dict is not None or cfg.file or cfg.hf_hub_id or not cfg.url:
        return
    if isinstance(cfg.url, (list, tuple)):
        url, name = cfg.url
    else:
        url, name = cfg.url, f'{variant}-{hashlib.sha256(cfg.url.encode()).hexdigest()[:12]}.pth'
    file = os.path.join(kwargs.get('cache_dir') or checkpoint_dir(), name)
    kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {}, file=download_once(url, file))


def checkpoint_dir() -> str:
    """torch.hub's checkpoint folder, where downloaded weights are kept."""
    return os.path.join(torch.hub.get_dir(), 'checkpoints')


def download_once(url: str, file: str) -> str:
    """`file`, downloaded from `url` first unless it is there already.

    Share links (Google Drive) may answer the download of a large file with a web page asking for confirmation;
    such a page is not kept (a later call would take it for the weights) and raises OSError, as a failed
    download does.
    """
    if os.path.exists(file):
        return file
    os.makedirs(os.path.dirname(file) or '.', exist_ok=True)
    _logger.info(f'Downloading {url} to {file}')
    torch.hub.download_url_to_file(url, file, progress=False)
    with open(file, 'rb') as f:
        start = f.read(64).lstrip()
    if start[:1] == b'<':
        os.remove(file)  # written just now by this download
        raise OSError(f'{url} answered with a web page, not the file: download it by hand in a browser')
    return file


# where training scripts keep the weights, in the order timm's `load_state_dict` looks for them
_WEIGHT_CONTAINERS = ('state_dict', 'model')


def checkpoint_weights(checkpoint: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The weights of a checkpoint: its `state_dict` or `model` entry when it has one (training-script and
    OpenMMLab files), else the checkpoint itself, without DDP / torch.compile key prefixes (`module.`,
    `_orig_mod.`: timm's `clean_state_dict`)."""
    for container in _WEIGHT_CONTAINERS:
        if isinstance(checkpoint.get(container), dict):
            checkpoint = checkpoint[container]
            break
    return clean_state_dict(checkpoint)


def unwrap_state_dict(checkpoint: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """A backbone's weights in a checkpoint: `checkpoint_weights`, of an OpenMMLab file only the backbone's
    (see `openmmlab_backbone`)."""
    return openmmlab_backbone(checkpoint_weights(checkpoint))


def openmmlab_backbone(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The backbone's weights of an OpenMMLab model's state dict, the state dict itself for any other.

    OpenMMLab models keep their backbone under `backbone.`; an mmpretrain classifier its classifier under
    `head.`, which is kept (the classification filters map it), while detectors and segmentors keep necks and
    heads under other names (`neck.`, `decode_head.`, `auxiliary_head.`, `rpn_head.`, `roi_head.`,
    `bbox_head.`, ...), which a backbone has no use for.
    """
    if not any(key.startswith('backbone.') for key in state_dict):
        return state_dict
    return {key.split('.', 1)[1] if key.startswith('backbone.') else key: value
            for key, value in state_dict.items() if key.startswith(('backbone.', 'head.'))}


class ClassifierMismatchError(ValueError, RuntimeError):
    """Pretrained weights whose classifier size disagrees with the pretrained cfg.

    Also a RuntimeError, as the size-mismatch error `load_state_dict` would otherwise raise, so callers that
    catch failed loads see it too.
    """


def _classifier_source(cfg: Dict) -> Tuple[str, str]:
    """(where the weights come from, the overlay that names them) for error messages."""
    if cfg.get('file'):
        return f"the file '{cfg['file']}'", f"file={str(cfg['file'])!r}, "
    if cfg.get('hf_hub_id'):
        filename = f", file '{cfg['hf_hub_filename']}'" if cfg.get('hf_hub_filename') else ''
        return f"the Hugging Face hub repository '{cfg['hf_hub_id']}'{filename}", ''
    return (f"'{cfg['url']}'" if cfg.get('url') else 'the pretrained weights'), ''


def check_classifier_size(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> None:
    """Raise `ClassifierMismatchError` when timm would silently lose or fail on the checkpoint's classifier.

    timm's `load_pretrained` trusts the pretrained cfg's `num_classes`: if the model's `num_classes` differs
    from it, the classifier is dropped (and re-initialised); otherwise it is loaded strictly. A checkpoint
    whose classifier has another size than the cfg says (e.g. an ImageNet-22k file passed with an
    ImageNet-1k tag) would therefore either lose its head silently (model built for the file's size) or
    fail with a bare size mismatch (model built for the cfg's size). A model whose size differs from both
    gets a new head, which is what was asked for.
    """
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    cfg_classes, classifiers = cfg.get('num_classes'), cfg.get('classifier')
    if cfg_classes is None or cfg_classes < 0 or not classifiers:
        return  # e.g. num_classes=-1: the caller asked for the classifier to be dropped
    names = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    weight = next((state_dict[n + '.weight'] for n in names if n + '.weight' in state_dict), None)
    if weight is None or weight.dim() == 0:
        return
    file_classes, model_classes = weight.shape[0] - cfg.get('label_offset', 0), getattr(model, 'num_classes', None)
    if file_classes == cfg_classes or model_classes not in (file_classes, cfg_classes):
        return
    arch, tag = cfg.get('architecture') or type(model).__name__, cfg.get('tag')
    name = f'{arch}.{tag}' if tag else arch
    source, file_arg = _classifier_source(cfg)
    tags = [t for t, c in get_arch_pretrained_cfgs(arch).items() if c.num_classes == file_classes and t != name]
    use_tag = f", or use the tag whose cfg has that classifier, '{tags[0]}'" if tags else ''
    overlay = f'pretrained_cfg_overlay=dict({file_arg}num_classes={file_classes})'
    problem = (f'the pretrained weights of {arch} ({source}) have a {file_classes}-class classifier '
               f"({names[0]}), but the pretrained cfg '{name}' says {cfg_classes} classes")
    if model_classes == file_classes:
        raise ClassifierMismatchError(
            f'{problem}, so timm would discard that classifier and leave the {file_classes}-class head randomly '
            f'initialised. Say how many classes the weights have: {overlay}{use_tag}.')
    raise ClassifierMismatchError(
        f'{problem} and the model is built with num_classes={model_classes}. To use the weights\' classifier pass '
        f'num_classes={file_classes} and {overlay}{use_tag}; to start a new {model_classes}-class classifier from '
        f'them pass num_classes={model_classes} and {overlay}.')
