"""Datasets and loaders for training and evaluation, built from timm's data pipeline, and the embedded
demo dataset.

Everything timm reads works here: an image folder or tar (`data.dataset: ''`), and the `torch/`,
`hfds/`, `hfids/`, `tfds/` and `wds/` datasets. `lkconv/digits` is a real image-classification set that
ships with scikit-learn (the UCI handwritten digits: 1,797 8x8 grey images of 10 classes), written out
once as an image folder (`train/` and `val/`, 32x32 PNGs) so that it goes through the same pipeline.
"""
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from timm.data import Mixup, create_dataset, create_loader, get_img_extensions, resolve_data_config

from .config import EMBEDDED_DATASETS, Config, DataConfig

__all__ = [
    'DIGITS', 'DIGITS_IMAGE_SIZE', 'DataFolderError', 'class_difference', 'class_names', 'create_eval_loader',
    'create_mixup', 'create_split_dataset', 'create_train_loader', 'dataset_splits', 'default_digits_dir',
    'empty_class_folder_problem', 'loader_sampler', 'prepare_dataset_dir', 'resolve_eval_data_config',
    'timm_dataset_name', 'write_digits_imagefolder',
]

DIGITS = 'lkconv/digits'
DIGITS_IMAGE_SIZE = 32  # the 8x8 originals are upsampled to this size when written
_DIGITS_VAL_FRACTION = 0.2
_COMPLETE_MARKER = 'README.txt'  # written last: its presence means the folder is complete
_MARKER_TEXT = 'Optical recognition of handwritten digits'  # how the marker starts (a user's README does not)


class DataFolderError(ValueError):
    """A dataset folder that cannot be used as it is (the message says why and what to do)."""


def default_digits_dir() -> Path:
    cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(cache) / 'lkconv' / 'digits'


def _is_digits_copy(root: Path) -> bool:
    marker = root / _COMPLETE_MARKER
    return marker.is_file() and marker.read_text(errors='replace').startswith(_MARKER_TEXT)


def write_digits_imagefolder(root: Path, seed: int = 0) -> Path:
    """Write scikit-learn's handwritten digits under `root` as `train/<digit>/*.png` and `val/<digit>/*.png`.

    The split is stratified (20% of every class for validation) and fixed by `seed`. The folder is built
    in a new temporary folder beside `root` and renamed into place, so an interrupted write never leaves a
    partial dataset. Does nothing if `root` already holds a complete copy; refuses (DataFolderError) a
    `root` that holds anything else, which is never touched.
    """
    root = Path(root)
    if _is_digits_copy(root):
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataFolderError(f"'{root}' is not empty and is not a copy of {DIGITS} written by lkconv; "
                              f"{DIGITS} is written into a new or empty folder: choose one (its files are left "
                              f"as they are)")
    import numpy as np
    from PIL import Image
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise RuntimeError('the embedded digits dataset needs scikit-learn: pip install scikit-learn') from e

    digits = load_digits()
    rng = np.random.default_rng(seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{root.name}.tmp-', dir=root.parent))  # new: ours to remove
    try:
        for label in range(10):
            indices = rng.permutation(np.flatnonzero(digits.target == label))
            n_val = int(round(len(indices) * _DIGITS_VAL_FRACTION))
            for split, chosen in (('val', indices[:n_val]), ('train', indices[n_val:])):
                folder = staging / split / str(label)
                folder.mkdir(parents=True)
                for index in chosen:
                    pixels = (digits.images[index] * (255 / 16)).round().astype(np.uint8)  # 17 grey levels
                    image = Image.fromarray(pixels).resize(  # uint8 2-D: greyscale
                        (DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE), Image.Resampling.BICUBIC)
                    image.save(folder / f'{index:04d}.png')
        (staging / _COMPLETE_MARKER).write_text(
            f'{_MARKER_TEXT} (UCI ML repository, CC BY 4.0), as shipped with '
            f'scikit-learn.\n{len(digits.target)} images, 10 classes, upsampled from 8x8 to '
            f'{DIGITS_IMAGE_SIZE}x{DIGITS_IMAGE_SIZE}; a stratified {_DIGITS_VAL_FRACTION:.0%} of each class '
            f'is in val/ (split seed {seed}).\n')
        staging.chmod(0o755)  # mkdtemp makes it private
        try:
            os.replace(staging, root)  # replaces an empty folder, never a non-empty one
        except OSError:
            if not _is_digits_copy(root):  # not just another process finishing first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def prepare_dataset_dir(dataset: str, data_dir: Optional[str]) -> Optional[str]:
    """The dataset root to pass to timm, writing the embedded dataset out first where one is named."""
    if dataset == DIGITS:
        return str(write_digits_imagefolder(Path(data_dir).expanduser() if data_dir else default_digits_dir()))
    return str(Path(data_dir).expanduser()) if data_dir else None


def timm_dataset_name(dataset: str) -> str:
    """The name timm's create_dataset reads `dataset` with (an embedded dataset is an image folder)."""
    return '' if dataset in EMBEDDED_DATASETS else dataset


def create_split_dataset(config: Config, root: Optional[str], split: str, is_training: bool):
    data = config.data
    return create_dataset(
        timm_dataset_name(data.dataset), root=root, split=split, is_training=is_training,
        class_map=data.class_map or None, batch_size=data.batch_size, seed=config.train.seed)


def resolve_eval_data_config(data: DataConfig, model: torch.nn.Module) -> Dict[str, Any]:
    """Input size, interpolation, mean/std and crop: the config's values where set, else the model's."""
    args = dict(img_size=data.img_size, crop_pct=data.crop_pct, crop_mode=data.crop_mode, mean=data.mean,
                std=data.std, interpolation=data.interpolation, in_chans=getattr(model, 'in_chans', 3))
    return resolve_data_config(args={k: v for k, v in args.items() if v is not None}, model=model)


def create_train_loader(dataset, data_config: Dict[str, Any], data: DataConfig, distributed: bool,
                        device: torch.device):
    """timm's training loader: random-resized crop, flips, colour jitter, RandAugment, random erasing,
    repeated augmentation. Workers are not persistent, so that each epoch's augmentation depends only on
    the seed set at its start (what makes a resumed run repeat an uninterrupted one)."""
    use_prefetcher = device.type == 'cuda'
    return create_loader(
        dataset,
        input_size=data_config['input_size'],
        batch_size=data.batch_size,
        is_training=True,
        no_aug=data.no_aug,
        re_prob=data.reprob,
        re_mode=data.remode,
        re_count=data.recount,
        scale=tuple(data.scale),
        ratio=tuple(data.ratio),
        hflip=data.hflip,
        vflip=data.vflip,
        color_jitter=data.color_jitter,
        auto_augment=data.aa,
        num_aug_repeats=data.aug_repeats if distributed else 0,
        interpolation=data.train_interpolation,
        mean=data_config['mean'],
        std=data_config['std'],
        num_workers=data.workers,
        distributed=distributed,
        pin_memory=data.pin_memory and use_prefetcher,
        device=device,
        use_prefetcher=use_prefetcher,
        persistent_workers=False,
    )


def create_eval_loader(dataset, data_config: Dict[str, Any], batch_size: int, workers: int, distributed: bool,
                       device: torch.device, pin_memory: bool = True):
    """timm's evaluation loader with the given (usually the model's own) resize, crop and normalisation."""
    use_prefetcher = device.type == 'cuda'
    return create_loader(
        dataset,
        input_size=data_config['input_size'],
        batch_size=batch_size,
        is_training=False,
        interpolation=data_config['interpolation'],
        mean=data_config['mean'],
        std=data_config['std'],
        crop_pct=data_config['crop_pct'],
        crop_mode=data_config['crop_mode'],
        num_workers=workers,
        distributed=distributed,
        pin_memory=pin_memory and use_prefetcher,
        device=device,
        use_prefetcher=use_prefetcher,
        persistent_workers=False,
    )


def class_names(dataset) -> Optional[List[str]]:
    """The class names of a folder/tar dataset in label order, or None where timm's reader does not say."""
    class_to_idx = getattr(getattr(dataset, 'reader', None), 'class_to_idx', None)
    if class_to_idx:
        return sorted(class_to_idx, key=class_to_idx.get)
    classes = getattr(dataset, 'classes', None)
    return [str(c) for c in classes] if classes else None


def empty_class_folder_problem(dataset) -> Optional[str]:
    """What is wrong where an image-folder split has class folders without images: timm skips them as
    classes, which shifts the labels of the classes after them (None if there are none)."""
    reader = getattr(dataset, 'reader', None)
    root, class_to_idx = getattr(reader, 'root', None), getattr(reader, 'class_to_idx', None)
    if class_to_idx is None or not root or not os.path.isdir(root):
        return None
    # a folder that is no class may still hold images: of nested classes, or left out by a class map
    empty = sorted(entry.name for entry in os.scandir(root)
                   if entry.is_dir() and not entry.name.startswith('.') and entry.name not in class_to_idx
                   and not _holds_images(entry.path))
    if not empty:
        return None
    return (f"class folder(s) without images in '{root}': {_list_names(empty)}; add images or remove them "
            f"(an empty class would shift the labels of the classes after it)")


def _holds_images(folder: str) -> bool:
    extensions = get_img_extensions(as_set=True)
    return any(os.path.splitext(f)[1].lower() in extensions for _, _, files in os.walk(folder) for f in files)


def _list_names(names: Sequence[str], limit: int = 5) -> str:
    """'a, b, c' (the first `limit`, then how many in all)."""
    names = list(names)
    shown = ', '.join(names[:limit])
    return shown + (f', ... ({len(names)} in all)' if len(names) > limit else '')


def class_difference(expected: Sequence[str], found: Sequence[str]) -> Optional[str]:
    """'missing: ...; extra: ...' between two lists of class names (None if they are the same list)."""
    if list(expected) == list(found):
        return None
    expected_set, found_set = set(expected), set(found)
    missing = [c for c in expected if c not in found_set]
    extra = [c for c in found if c not in expected_set]
    parts = [f'{kind}: {_list_names(names)}' for kind, names in (('missing', missing), ('extra', extra)) if names]
    return '; '.join(parts) or 'the same classes in another order'


def loader_sampler(loader) -> Optional[torch.utils.data.Sampler]:
    """The sampler under timm's prefetching wrapper (if any)."""
    return getattr(getattr(loader, 'loader', loader), 'sampler', None)


def create_mixup(config: Config, num_classes: int) -> Optional[Mixup]:
    """timm's Mixup/CutMix (with label smoothing folded into the soft targets), or None if both are off."""
    data = config.data
    if not (data.mixup > 0 or data.cutmix > 0 or data.cutmix_minmax is not None):
        return None
    return Mixup(
        mixup_alpha=data.mixup, cutmix_alpha=data.cutmix,
        cutmix_minmax=tuple(data.cutmix_minmax) if data.cutmix_minmax else None,
        prob=data.mixup_prob, switch_prob=data.mixup_switch_prob, mode=data.mixup_mode,
        label_smoothing=config.train.smoothing, num_classes=num_classes)


def dataset_splits(config: Config, root: Optional[str]) -> Tuple[Any, Optional[Any]]:
    """The training dataset and (unless data.val_split is empty) the evaluation dataset."""
    train = create_split_dataset(config, root, config.data.train_split, is_training=True)
    val = create_split_dataset(config, root, config.data.val_split, is_training=False) if config.data.val_split \
        else None
    return train, val
