"""The authors' published detection and segmentation checkpoints, and the backbone each was trained with.

The checkpoints are OpenMMLab files (mmdet 2.x / mmseg 0.x: `meta` + `state_dict`, the backbone under
`backbone.`); each family's checkpoint filter reads their backbone part, `lkconv.segmentation` their heads.
`downstream_backbone_args(name)` gives the `timm.create_model` arguments that build a family's official
downstream backbone, i.e. what differs from the classification model:

    timm.create_model('unireplknet_t', features_only=True, pretrained=True,
                      pretrained_cfg_overlay=dict(file='upernet_unireplknet_t_512_160k_ade20k_miou48.56.pth'),
                      **downstream_backbone_args('unireplknet_t'))

Importing this module imports neither torch nor timm (the zoo's index rule).
"""
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

__all__ = ['DownstreamCheckpoint', 'PUBLISHED', 'downstream_backbone_args', 'find_published']

# LSNet's detection/segmentation backbones build the stage-4 attention bias for a 14x14 grid (an 896-pixel
# input) whatever the image size, and keep every BatchNorm in eval mode while fine-tuning
_LSNET_DOWNSTREAM = dict(img_size=896, norm_eval=True)

# timm.data's IMAGENET_DEFAULT_MEAN / STD, written out to keep timm unimported
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def downstream_backbone_args(model_name: str) -> Dict[str, Any]:
    """`timm.create_model` arguments that make `model_name` the authors' OpenMMLab detection/segmentation backbone.

    UniRepLKNet: the four output LayerNorms (`feature_norms=True`); RepLKNet-XL: the per-stage output BatchNorms
    of `norm_intermediate_features` (`feature_norms=True`); LSNet: the 14x14 attention bias and frozen BatchNorm
    statistics; every other model: its classification backbone as it is (`{}`).
    """
    family = model_name.split('.')[0]
    if family.startswith('unireplknet_') or family == 'replknet_xl':
        return dict(feature_norms=True)
    if family.startswith('lsnet_'):
        return dict(_LSNET_DOWNSTREAM)
    return {}


@dataclass(frozen=True)
class DownstreamCheckpoint:
    """One published detection / segmentation checkpoint.

    `file` is the authors' file name where they publish it under one (else the name the download is stored
    under); `url` downloads it directly ('' where only a share page exists: download it by hand). The test-time
    fields are the official config's: the image is resized keeping its aspect ratio to fit `test_scale`
    (long side, short side), rounded up to a multiple of `size_divisor` where set, and run whole or in
    `slide_crop` windows `slide_stride` apart.
    """
    model: str
    head: str  # 'upernet' | 'semantic_fpn' | 'cascade_mask_rcnn' | 'mask_rcnn' | 'retinanet' | 'fcos'
    dataset: str  # 'ade20k' | 'cityscapes' | 'coco'
    pretrain: str
    result: str
    config: str
    file: str
    url: str = ''
    page: str = ''  # where the authors link the file
    crop_size: Tuple[int, int] = ()
    test_scale: Tuple[int, int] = ()
    size_divisor: Optional[int] = None
    test_mode: str = 'whole'
    slide_crop: Tuple[int, int] = ()
    slide_stride: Tuple[int, int] = ()
    align_corners: bool = False  # of the heads' resizing (mmseg's 769x769 Cityscapes configs set it)
    # the configs' image normalisation, in 0..1 units (OpenMMLab writes it in 0..255): ImageNet's everywhere
    # (VAN's classification models use 0.5 / 0.5, its segmentation configs do not) but RepLKNet-XL's 0.5 / 0.5
    mean: Tuple[float, float, float] = _IMAGENET_MEAN
    std: Tuple[float, float, float] = _IMAGENET_STD

    @property
    def num_classes(self) -> int:
        return {'ade20k': 150, 'cityscapes': 19, 'coco': 80}[self.dataset]


_UNIREPLKNET_HF = 'https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/'
_UNIREPLKNET_PAGE = 'https://github.com/AILab-CVC/UniRepLKNet#instructions-for-detection-and-segmentation'
_LSNET_HF = 'https://huggingface.co/jameslahm/lsnet/resolve/main/'
_LSNET_PAGE = 'https://github.com/THU-MIG/lsnet'
_VAN_PAGE = 'https://github.com/Visual-Attention-Network/VAN-Segmentation'
_REPLKNET_PAGE = 'https://github.com/DingXiaoH/RepLKNet-pytorch'
_ADE = dict(dataset='ade20k', test_scale=(2048, 512))


def _drive(file_id: str) -> str:
    return f'https://drive.google.com/uc?export=download&id={file_id}'


def _unireplknet_upernet(variant: str, pretrain: str, crop: int, result: str, file: str, url: str = '',
                         config: str = '') -> DownstreamCheckpoint:
    return DownstreamCheckpoint(
        f'unireplknet_{variant}', 'upernet', pretrain=pretrain, result=f'mIoU {result} (single / multi-scale)',
        config=config, file=file, url=url, page=_UNIREPLKNET_PAGE, crop_size=(crop, crop), size_divisor=32,
        **dict(_ADE, test_scale=(2560, 640) if crop == 640 else (2048, 512)))


def _unireplknet_cascade(variant: str, pretrain: str, result: str, file: str = '') -> DownstreamCheckpoint:
    config = f'casc_mask_rcnn_unireplknet_{variant}_{pretrain}_fpn_3x_coco.py'
    return DownstreamCheckpoint(
        f'unireplknet_{variant}', 'cascade_mask_rcnn', 'coco', pretrain, f'box / mask AP {result}', config,
        file=file or config.replace('_fpn', '').replace('.py', '.pth'), url=_UNIREPLKNET_HF + file if file else '',
        page=_UNIREPLKNET_PAGE, test_scale=(1333, 800))


def _lsnet(variant: str, head: str, result: str) -> DownstreamCheckpoint:
    file = f'lsnet_{variant}_' + dict(retinanet='retinanet', mask_rcnn='maskrcnn', semantic_fpn='semfpn')[head] + '.pth'
    dense = dict(_ADE, crop_size=(512, 512)) if head == 'semantic_fpn' else dict(dataset='coco', test_scale=(1333, 800))
    return DownstreamCheckpoint(
        f'lsnet_{variant}', head, pretrain='in1k', result=result, config='', file=file, url=_LSNET_HF + file,
        page=_LSNET_PAGE, **dense)


def _van(variant: str, head: str, result: str, pretrain: str = 'in1k') -> DownstreamCheckpoint:
    config = (f"upernet_van_{variant}_512x512_160k_ade20k{'_22k' if pretrain == 'in22k' else ''}.py"
              if head == 'upernet' else f'fpn_van_{variant}_ade20k_40k.py')
    return DownstreamCheckpoint(
        f'van_{variant}', head, pretrain=pretrain, result=f'mIoU {result}', config=config,
        file=config.replace('.py', '.pth'), page=_VAN_PAGE, crop_size=(512, 512), **_ADE)


def _replknet(variant: str, head: str, dataset: str, pretrain: str, result: str, file: str,
              drive_id: str) -> DownstreamCheckpoint:
    if dataset == 'cityscapes':  # mmseg's 769x769 Cityscapes setting, tested whole
        test = dict(crop_size=(769, 769), test_scale=(2049, 1025), align_corners=True)
    elif dataset == 'ade20k' and pretrain == 'in1k':
        test = dict(crop_size=(512, 512), test_scale=(2048, 512))
    elif dataset == 'ade20k':  # trained on 640 crops, tested in 640 windows
        test = dict(crop_size=(640, 640), test_scale=(2048, 512), test_mode='slide', slide_crop=(640, 640),
                    slide_stride=(426, 426))
    else:
        test = dict(test_scale=(1333, 800))
    if variant == 'xl':  # MegData73M's normalisation: mean = std = 127.5 in 0..255 units
        test.update(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return DownstreamCheckpoint(
        f'replknet_{variant}', head, dataset, pretrain, result, config='', file=file, url=_drive(drive_id),
        page=_REPLKNET_PAGE, **test)


PUBLISHED: Tuple[DownstreamCheckpoint, ...] = (
    # UniRepLKNet: Hugging Face DingXiaoH/UniRepLKNet (and Google Drive), mmseg 0.27 / mmdet 2.28
    _unireplknet_upernet('t', 'in1k', 512, '48.6 / 49.1', 'upernet_unireplknet_t_512_160k_ade20k_miou48.56.pth',
                         _UNIREPLKNET_HF + 'upernet_unireplknet_t_512_160k_ade20k_miou48.56.pth',
                         'upernet_unireplknet_t_512_160k_ade20k.py'),
    _unireplknet_upernet('s', 'in1k', 512, '50.5 / 51.0', 'upernet_unireplknet_s_512_160k_ade20k.pth',
                         _drive('1SBHvbK4zoPSZ827F5Sp209LYIh2T7Iew'), 'upernet_unireplknet_s_512_160k_ade20k.py'),
    _unireplknet_upernet('s', 'in22k', 512, '51.9 / 52.7', 'upernet_unireplknet_s_in22k_512_160k_ade20k.pth',
                         _drive('15dNuw34kia5qtt6UijcnutEktY05OrKH'), 'upernet_unireplknet_s_in22k_512_160k_ade20k.py'),
    _unireplknet_upernet('s', 'in22k', 640, '52.3 / 52.7', 'upernet_unireplknet_s_in22k_640_160k_ade20k.pth',
                         _drive('1WVmAQ8sKDeX0APS9Q88z4dZge31kHx2v'), 'upernet_unireplknet_s_in22k_640_160k_ade20k.py'),
    _unireplknet_upernet('b', 'in22k', 640, '53.5 / 53.9', 'upernet_unireplknet_b_in22k_640_160k_ade20k_miou53.52.pth',
                         _UNIREPLKNET_HF + 'upernet_unireplknet_b_in22k_640_160k_ade20k_miou53.52.pth',
                         'upernet_unireplknet_b_in22k_640_160k_ade20k.py'),
    _unireplknet_upernet('l', 'in22k', 640, '54.5 / 55.0', 'upernet_unireplknet_l_in22k_640_160k_ade20k.pth',
                         _drive('1Qev75aKZY5bNAM17cLecD2OoZwKf5DA7'), 'upernet_unireplknet_l_in22k_640_160k_ade20k.py'),
    # no XL segmentation config is published: the L config's head with XL's widths
    _unireplknet_upernet('xl', 'in22k', 640, '55.2 / 55.6', 'upernet_unireplknet_xl_in22k_640_160k_ade20k.pth',
                         _drive('1Ajwc7ZOk5eK19XX6VzgmAu2Wn0Dkb3jI')),
    _unireplknet_cascade('t', 'in1k', '51.7 / 44.9', 'casc_mask_rcnn_unireplknet_t_in1k_3x_coco_ap51.75.pth'),
    _unireplknet_cascade('s', 'in1k', '53.0 / 45.9'),
    _unireplknet_cascade('s', 'in22k', '54.3 / 47.1'),
    _unireplknet_cascade('b', 'in22k', '54.8 / 47.4'),
    _unireplknet_cascade('l', 'in22k', '55.8 / 48.4'),
    _unireplknet_cascade('xl', 'in22k', '56.4 / 49.0', 'casc_mask_rcnn_unireplknet_xl_in22k_3x_coco_ap56.39.pth'),
    # LSNet: Hugging Face jameslahm/lsnet, mmdet 2.28 / mmseg 0.30
    _lsnet('t', 'retinanet', 'AP 34.2'), _lsnet('s', 'retinanet', 'AP 36.5'), _lsnet('b', 'retinanet', 'AP 39.2'),
    _lsnet('t', 'mask_rcnn', 'box / mask AP 35.0 / 32.7'), _lsnet('s', 'mask_rcnn', 'box / mask AP 37.4 / 34.8'),
    _lsnet('b', 'mask_rcnn', 'box / mask AP 40.8 / 37.8'),
    _lsnet('t', 'semantic_fpn', 'mIoU 40.1'), _lsnet('s', 'semantic_fpn', 'mIoU 41.6'),
    _lsnet('b', 'semantic_fpn', 'mIoU 43.1'),
    # VAN-Segmentation (mmseg 0.26): UperNet on Tsinghua Cloud, Semantic FPN on Google Drive (share pages only)
    _van('b2', 'upernet', '50.1 (multi-scale)'), _van('b3', 'upernet', '50.6 (multi-scale)'),
    _van('b4', 'upernet', '52.2 (multi-scale)'), _van('b4', 'upernet', '53.5 (multi-scale)', 'in22k'),
    _van('b5', 'upernet', '53.9 (multi-scale)', 'in22k'), _van('b6', 'upernet', '54.7 (multi-scale)', 'in22k'),
    _van('b0', 'semantic_fpn', '38.5'), _van('b1', 'semantic_fpn', '42.9'), _van('b2', 'semantic_fpn', '46.7'),
    _van('b3', 'semantic_fpn', '48.1'),
    # RepLKNet: Google Drive and Baidu Netdisk; the README names two files, the others are stored under names
    # of the same pattern
    _replknet('31b', 'upernet', 'cityscapes', 'in1k', 'mIoU 83.1 / 83.5',
              'RepLKNet-31B_ImageNet-1K_UperNet_Cityscapes.pth', '1j3YwToRqTHHi7ocln0iBz1tE6hItD_JO'),
    _replknet('31b', 'upernet', 'ade20k', 'in1k', 'mIoU 49.9 / 50.6', 'RepLKNet-31B_ImageNet-1K_UperNet_ADE20K.pth',
              '1ZV1CP1KzeSdH6_wKw4ytVe9BlCGHf89s'),
    _replknet('31b', 'upernet', 'ade20k', 'in22k', 'mIoU 51.5 / 52.3', 'RepLKNet-31B_ImageNet-22K_UperNet_ADE20K.pth',
              '1W2W4nD2HzTsG_yP9ppLYAqMo3T3JHBNW'),
    _replknet('31l', 'upernet', 'ade20k', 'in22k', 'mIoU 52.4 / 52.7', 'RepLKNet-31L_ImageNet-22K_UperNet_ADE20K.pth',
              '1nrZ723LC3QYjcVHJm8jpOOcecfWMsjxL'),
    _replknet('xl', 'upernet', 'ade20k', 'megdata73m', 'mIoU 55.2 / 56.0', 'RepLKNet-XL_MegData73M_UperNet_ADE20K.pth',
              '14GbBI8tdeEl_ECytDCdrfAfNm1McqMv4'),
    _replknet('31b', 'fcos', 'coco', 'in1k', 'box AP 47.0', 'RepLKNet-31B_ImageNet-1K_FCOS_COCO.pth',
              '1g0jSpONBF2wJDXYhB7P3mbqAVE587Myi'),
    _replknet('31b', 'cascade_mask_rcnn', 'coco', 'in1k', 'box / mask AP 52.2 / 45.2',
              'RepLKNet-31B_ImageNet-1K_CascMaskRCNN_COCO.pth', '1XqWSkQZSLMIhyaQvaIhGbuFhdDoRJQ4Z'),
    _replknet('31b', 'cascade_mask_rcnn', 'coco', 'in22k', 'box / mask AP 53.0 / 46.0',
              'RepLKNet-31B_ImageNet-22K_CascMaskRCNN_COCO.pth', '1faI-MiNuPidum6dC6dGADfYWe6J-bTAz'),
    _replknet('31l', 'cascade_mask_rcnn', 'coco', 'in22k', 'box / mask AP 53.9 / 46.5',
              'RepLKNet-31L_ImageNet-22K_CascMaskRCNN_COCO.pth', '1qLQONhIjCEuykhdy-wHx1Ah9lT3v2OXh'),
    _replknet('xl', 'cascade_mask_rcnn', 'coco', 'megdata73m', 'box / mask AP 55.5 / 48.0',
              'RepLKNet-XL_MegData73M_CascMaskRCNN_COCO.pth', '1i0TqfwQJQUVHWdB5oyDgxlUUqzPZmIVr'),
)


def find_published(file_name: str) -> Optional[DownstreamCheckpoint]:
    """The published checkpoint stored under `file_name` (a path's base name counts), or None."""
    name = os.path.basename(str(file_name))
    return next((checkpoint for checkpoint in PUBLISHED if checkpoint.file == name), None)
