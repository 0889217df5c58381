"""lkconv.segmentation: mmseg's UperNet / Semantic FPN heads against recorded official outputs, published
checkpoints in and out, the official test-time rule, training and ONNX export."""
import dataclasses
import math
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lkconv.segmentation import (
    FPN, DecodeHead, EncoderDecoder, FCNHead, FPNHead, InferenceConfig, SemanticFPN, UperHead, UperNet, inference_sizes,
    segmentation_loss, slide_inference)
from lkconv.segmentation import checkpoint as seg_checkpoint
from lkconv.segmentation.checkpoint import inference_config_of, resolve_checkpoint
from lkconv.zoo.downstream import find_published
from lkconv.zoo.weights import WeightsUnavailable
from parity import load_fixture, rel_error

UNIREPLKNET_T_ADE = 'upernet_unireplknet_t_512_160k_ade20k_miou48.56.pth'


class FixedFeatures(nn.Module):
    """A stand-in backbone that returns recorded feature maps whatever the image."""

    def __init__(self, features):
        super().__init__()
        self.features = features

    def forward(self, images):
        return self.features


@pytest.fixture(scope='module')
def head_fixture(parity_dir):
    return load_fixture(parity_dir / 'upernet_head.pt')


@pytest.fixture(scope='module')
def unireplknet_a_checkpoint(parity_dir, head_fixture, tmp_path_factory):
    """An mmseg UperNet checkpoint of UniRepLKNet-A: the official downstream backbone's weights with the official
    heads' weights, float16 as published, and the official backbone's input and feature maps."""
    backbone = torch.load(parity_dir / 'unireplknet_a_mm_backbone.pt', weights_only=True)
    state_dict = {k: v for k, v in backbone['checkpoint']['state_dict'].items() if k.startswith('backbone.')}
    heads = torch.load(parity_dir / 'upernet_head.pt', weights_only=True)['state_dict']
    path = tmp_path_factory.mktemp('seg') / 'upernet_unireplknet_a_ade20k.pth'
    torch.save({'meta': dict(backbone['checkpoint']['meta']), 'state_dict': {**state_dict, **heads}}, path)
    return path, backbone['input'], backbone['features']


def official_heads(fixture):
    decode, aux = fixture['init_kwargs']['decode_head'], fixture['init_kwargs']['auxiliary_head']
    decode_head = UperHead(decode['in_channels'], decode['num_classes'], decode['channels'], decode['pool_scales'],
                           decode['dropout_ratio'], decode['align_corners'])
    auxiliary_head = FCNHead(aux['in_channels'], aux['num_classes'], aux['in_index'], aux['channels'],
                             aux['num_convs'], concat_input=aux['concat_input'], dropout=aux['dropout_ratio'])
    return decode_head, auxiliary_head


# ------------------------------------------------------------------------------------------------ parity
def test_upernet_heads_compute_what_mmseg_computes(head_fixture):
    decode_head, auxiliary_head = official_heads(head_fixture)
    model = EncoderDecoder(FixedFeatures(head_fixture['features']), decode_head, auxiliary_head=auxiliary_head)
    model.load_state_dict(head_fixture['state_dict'], strict=True)  # mmseg's key names, nothing else
    model.eval()
    features = head_fixture['features']
    with torch.no_grad():
        assert rel_error(decode_head(features), head_fixture['decode_logits']) <= 1e-4
        assert rel_error(auxiliary_head(features), head_fixture['aux_logits']) <= 1e-4
        logits = model(torch.zeros(1, 3, *head_fixture['image_size']))  # whole-image test output
    assert rel_error(logits[:, head_fixture['seg_logits_classes']], head_fixture['seg_logits']) <= 1e-4
    margin_ok = head_fixture['seg_pred_margin_ok']
    assert torch.equal(logits.argmax(1)[margin_ok], head_fixture['seg_pred'][margin_ok])


def test_from_checkpoint_loads_backbone_and_heads(unireplknet_a_checkpoint, head_fixture):
    path, images, features = unireplknet_a_checkpoint
    model = UperNet.from_checkpoint(str(path), backbone_name='unireplknet_a')
    assert not model.training and model.num_classes == 150
    with torch.no_grad():
        ours = model.forward_features(images)
        for level, (our, official) in enumerate(zip(ours, features)):
            assert rel_error(our, official) <= 1e-4, level
        # the heads, loaded from the whole file, still compute the recorded official outputs
        head_features = head_fixture['features']
        assert rel_error(model.decode_head(head_features), head_fixture['decode_logits']) <= 1e-4
        assert rel_error(model.auxiliary_head(head_features), head_fixture['aux_logits']) <= 1e-4
        logits = model(images)
    assert logits.shape == (2, 150, *images.shape[-2:]) and logits.isfinite().all()


def test_checkpoint_mistakes_are_one_clear_error(unireplknet_a_checkpoint, tmp_path):
    path, _, _ = unireplknet_a_checkpoint
    with pytest.raises(ValueError, match='predicts 150 classes .* not 19'):
        UperNet.from_checkpoint(str(path), backbone_name='unireplknet_a', num_classes=19)
    with pytest.raises(ValueError, match='backbone is unknown: pass backbone_name'):
        UperNet.from_checkpoint(str(path))
    with pytest.raises(ValueError, match="do not fit van_b0"):
        UperNet.from_checkpoint(str(path), backbone_name='van_b0')
    with pytest.raises(ValueError, match='no SemanticFPN decode head .*UperNet.from_checkpoint'):
        SemanticFPN.from_checkpoint(str(path), backbone_name='unireplknet_a')
    classifier_only = tmp_path / 'classifier.pth'
    torch.save({'state_dict': {'head.fc.weight': torch.zeros(2, 2)}}, classifier_only)
    with pytest.raises(ValueError, match='not a segmentation checkpoint'):
        UperNet.from_checkpoint(str(classifier_only), backbone_name='unireplknet_a')
    with pytest.raises(ValueError, match='did you mean: ' + UNIREPLKNET_T_ADE.replace('.', r'\.')):
        UperNet.from_checkpoint(UNIREPLKNET_T_ADE.replace('48.56', '48.5'))
    with pytest.raises(ValueError, match='detection checkpoint'):
        UperNet.from_checkpoint('casc_mask_rcnn_unireplknet_t_in1k_3x_coco_ap51.75.pth')
    with pytest.raises(ValueError, match='SemanticFPN.from_checkpoint'):
        UperNet.from_checkpoint('lsnet_t_semfpn.pth')
    with pytest.raises(ValueError, match='no direct download: download it from https://github.com/Visual'):
        UperNet.from_checkpoint('upernet_van_b2_512x512_160k_ade20k.pth')
    with pytest.raises(ValueError, match='does not exist'):
        UperNet.from_checkpoint(str(tmp_path / UNIREPLKNET_T_ADE))
    with pytest.raises(ValueError, match='num_classes must be at least 1, got 0'):
        UperNet('unireplknet_a', 0)


def test_published_names_resolve_without_download(unireplknet_a_checkpoint, tmp_path, monkeypatch):
    """A published name is looked up in the checkpoint folder first; its record sets the official test-time rule,
    normalisation and backbone."""
    monkeypatch.setattr(torch.hub, 'download_url_to_file', lambda *a, **k: pytest.fail('downloaded'))
    path, images, _ = unireplknet_a_checkpoint
    cached = tmp_path / UNIREPLKNET_T_ADE
    cached.write_bytes(path.read_bytes())
    record = find_published(UNIREPLKNET_T_ADE)
    assert resolve_checkpoint(UNIREPLKNET_T_ADE, 'upernet', str(tmp_path)) == (str(cached), record)
    # the file is A's, so the published record (T) does not fit it: said in one line
    with pytest.raises(ValueError, match="do not fit unireplknet_t"):
        UperNet.from_checkpoint(UNIREPLKNET_T_ADE, cache_dir=str(tmp_path))
    # a record of the same settings for the A file's name: the whole published path
    a_record = dataclasses.replace(record, model='unireplknet_a', file='upernet_unireplknet_a.pth')
    (tmp_path / a_record.file).write_bytes(path.read_bytes())
    monkeypatch.setattr(seg_checkpoint, 'find_published', lambda name: a_record if name == a_record.file else None)
    model = UperNet.from_checkpoint(a_record.file, cache_dir=str(tmp_path))
    # UniRepLKNet's ADE20K config: Resize (2048, 512) keeping the ratio, ResizeToMultiple(32), whole inference,
    # ImageNet normalisation
    assert model.inference == InferenceConfig(scale=(2048, 512), size_divisor=32, mode='whole')
    assert model.inference == inference_config_of(record)
    assert model.image_mean == pytest.approx((0.485, 0.456, 0.406)) and model.align_corners is False


# ------------------------------------------------------------------------------------------------ test-time rule
@pytest.mark.parametrize('answer', ['web page', 'no network'])
def test_failed_downloads_are_one_clear_error(tmp_path, monkeypatch, answer):
    """A share link that answers with a web page (Google Drive's confirmation for large files) leaves nothing
    behind; an unreachable one says so; both say where to get the file by hand."""
    def download(url, dst, **kwargs):
        if answer == 'no network':
            raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')
        Path(dst).write_text('<!DOCTYPE html><html>Google Drive can\'t scan this file for viruses</html>')

    monkeypatch.setattr(torch.hub, 'download_url_to_file', download)
    name = 'upernet_unireplknet_s_512_160k_ade20k.pth'  # a Google Drive link
    reason = 'answered with a web page, not the file' if answer == 'web page' else 'name resolution'
    with pytest.raises(WeightsUnavailable, match=rf"cannot download '{name}' .*{reason}.*github.com/AILab-CVC"):
        UperNet.from_checkpoint(name, cache_dir=str(tmp_path))
    assert not (tmp_path / name).exists()


def test_inference_sizes_follow_mmcv():
    # 300x400 into (2048, 512): factor min(2048/400, 512/300) = 1.7067; 400 * 1.7067 = 682.67 -> int(683.17) = 683,
    # then up to multiples of 32: 512 x 704
    config = InferenceConfig(scale=(2048, 512), size_divisor=32)
    assert inference_sizes(300, 400, config) == ((512, 683), (512, 704))
    # a panorama is bounded by its long side: 100x4096 -> factor 0.5 -> 50x2048
    assert inference_sizes(100, 4096, InferenceConfig(scale=(2048, 512))) == ((50, 2048),)
    assert inference_sizes(7, 9, InferenceConfig(scale=None)) == ()


def test_predict_resizes_normalises_and_restores_the_size():
    model = UperNet('van_b0', 3, channels=16, aux_index=None).eval()
    model.inference = InferenceConfig(scale=(200, 100), size_divisor=32)
    model.image_mean, model.image_std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    seen = []
    model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    image = torch.rand(1, 3, 30, 45)
    logits = model.predict(image)
    # 30x45 into (200, 100): factor min(200/45, 100/30) = 10/3 -> 100x150, then 128x160
    assert seen[0].shape[-2:] == (128, 160) and logits.shape == (1, 3, 30, 45)
    resized = F.interpolate(F.interpolate(image, size=(100, 150), mode='bilinear'), size=(128, 160), mode='bilinear')
    mean, std = torch.tensor(model.image_mean).view(1, 3, 1, 1), torch.tensor(model.image_std).view(1, 3, 1, 1)
    assert torch.allclose(seen[0], (resized - mean) / std, atol=1e-6)
    with pytest.raises(ValueError, match='divide 0..255 images by 255'):
        model.predict(image * 255)


def test_slide_inference_windows_and_averaging():
    """mmseg's windows: the last one of a row/column ends at the border; overlaps are averaged, so a pointwise
    model gives what it gives on the whole image."""
    crops = []

    def pointwise(x):
        crops.append(x.shape[-2:])
        return torch.cat([x.sum(1, keepdim=True), x.prod(1, keepdim=True)], dim=1)

    images = torch.randn(2, 3, 10, 13)
    logits = slide_inference(pointwise, images, 2, crop_size=(6, 8), stride=(4, 5))
    # rows: (10 - 6 + 3) // 4 + 1 = 2, columns: (13 - 8 + 4) // 5 + 1 = 2, every window full size
    assert crops == [(6, 8)] * 4
    assert torch.allclose(logits, pointwise(images), atol=1e-6)
    # a pointwise segmentor predicts in slide mode what it predicts in whole mode
    class PointwiseHead(DecodeHead):
        def forward(self, features):
            return self.classify(features[0])

    model = EncoderDecoder(lambda x: [x], PointwiseHead(3, 5, dropout=0.0)).eval()
    model.inference = InferenceConfig(scale=(26, 20), mode='whole')
    whole = model.predict(images.sigmoid())
    model.inference = InferenceConfig(scale=(26, 20), mode='slide', crop_size=(6, 8), stride=(4, 5))
    assert torch.allclose(model.predict(images.sigmoid()), whole, atol=1e-5)


# ------------------------------------------------------------------------------------------------ Semantic FPN
def mmseg_semantic_fpn_shapes(in_channels, strides, num_classes, neck=256, channels=128):
    """{key: shape} of mmseg's FPN(in_channels, neck, num_outs=len) + FPNHead(feature_strides=strides), from the
    construction rule of `mmseg/models/necks/fpn.py` and `decode_heads/fpn_head.py`."""
    shapes = {}
    for i, c in enumerate(in_channels):
        shapes.update({f'neck.lateral_convs.{i}.conv.weight': (neck, c, 1, 1),
                       f'neck.lateral_convs.{i}.conv.bias': (neck,),
                       f'neck.fpn_convs.{i}.conv.weight': (neck, neck, 3, 3),
                       f'neck.fpn_convs.{i}.conv.bias': (neck,)})
    for i, stride in enumerate(strides):
        length = max(1, int(math.log2(stride) - math.log2(strides[0])))
        for k in range(length):
            index = 2 * k if stride != strides[0] else k  # an Upsample (no weights) follows each conv but level 0's
            prefix = f'decode_head.scale_heads.{i}.{index}'
            shapes[f'{prefix}.conv.weight'] = (channels, neck if k == 0 else channels, 3, 3)
            shapes.update({f'{prefix}.bn.{n}': (channels,) for n in ('weight', 'bias', 'running_mean', 'running_var')})
            shapes[f'{prefix}.bn.num_batches_tracked'] = ()
    shapes['decode_head.conv_seg.weight'] = (num_classes, channels, 1, 1)
    shapes['decode_head.conv_seg.bias'] = (num_classes,)
    return shapes


def reference_semantic_fpn(neck, head, features):
    """mmseg's FPN (no norm, no activation) and FPNHead in eval mode, written functionally from their source:
    top-down nearest upsampling; level i's branch is i conv modules (level 0: one), each followed by a 2x
    bilinear upsampling (none on level 0); branches summed, then conv_seg."""
    def conv_module(module, x):
        x = F.conv2d(x, module.conv.weight, padding=1)
        bn = module.bn
        return F.relu(F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=1e-5))

    laterals = [F.conv2d(x, m.conv.weight, m.conv.bias) for m, x in zip(neck.lateral_convs, features)]
    for i in range(len(laterals) - 1, 0, -1):
        laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode='nearest')
    levels = [F.conv2d(x, m.conv.weight, m.conv.bias, padding=1) for m, x in zip(neck.fpn_convs, laterals)]
    total = conv_module(head.scale_heads[0][0], levels[0])
    for i in range(1, len(levels)):
        x = levels[i]
        for k in range(i):
            x = F.interpolate(conv_module(head.scale_heads[i][2 * k], x), scale_factor=2, mode='bilinear')
        total = total + F.interpolate(x, size=total.shape[-2:], mode='bilinear')
    return F.conv2d(total, head.conv_seg.weight, head.conv_seg.bias)


def test_semantic_fpn_computes_mmseg_fpn_and_fpn_head():
    neck, head = FPN([8, 16, 24, 32], 16), FPNHead([16] * 4, (4, 8, 16, 32), 5, channels=8)
    with torch.no_grad():
        for module in (neck, head):
            for name, tensor in module.state_dict().items():
                if tensor.is_floating_point():
                    tensor.copy_(torch.rand_like(tensor) + 0.5 if 'running_var' in name else torch.randn_like(tensor))
        features = [torch.randn(2, c, 40 // s, 56 // s) for c, s in zip((8, 16, 24, 32), (1, 2, 4, 8))]
        ours = head.eval()(neck(features))
        assert rel_error(ours, reference_semantic_fpn(neck, head, features)) <= 1e-5


def test_semantic_fpn_has_mmseg_keys_and_predicts_at_the_finest_stride(parity_dir, tmp_path):
    model = SemanticFPN('van_b0', 150)
    heads = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith('backbone.')}
    assert heads == mmseg_semantic_fpn_shapes([32, 64, 160, 256], (4, 8, 16, 32), 150)
    with torch.no_grad():
        assert model.decode_head(model.forward_features(torch.randn(1, 3, 64, 96))).shape == (1, 150, 16, 24)

    # LSNet's levels are at strides 8..64 and its config keeps feature_strides (4, 8, 16, 32): the same head,
    # predicting at stride 8
    lsnet_head = FPNHead([256] * 4, (8, 16, 32, 64), 150)
    config_head = FPNHead([256] * 4, (4, 8, 16, 32), 150)
    assert {k: v.shape for k, v in lsnet_head.state_dict().items()} == \
        {k: v.shape for k, v in config_head.state_dict().items()}
    levels = [torch.randn(1, c, 96 // s, 128 // s) for c, s in zip((64, 128, 256, 384), (8, 16, 32, 64))]
    with torch.no_grad():
        assert config_head.eval()(FPN([64, 128, 256, 384])(levels)).shape == (1, 150, 12, 16)

    # a Semantic FPN checkpoint: VAN's official downstream backbone weights with neck and head weights
    backbone = torch.load(parity_dir / 'van_b0_mm_backbone.pt', weights_only=True)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    heads = {k: v.half() for k, v in model.state_dict().items() if not k.startswith('backbone.')}
    file = tmp_path / 'fpn_van_b0.pth'
    torch.save({'meta': {}, 'state_dict': {**{k: v for k, v in backbone['checkpoint']['state_dict'].items()
                                             if k.startswith('backbone.')}, **heads}}, file)
    loaded = SemanticFPN.from_checkpoint(str(file), backbone_name='van_b0')
    assert all(torch.equal(v.float(), loaded.state_dict()[k].float()) for k, v in heads.items())
    with torch.no_grad():
        for ours, official in zip(loaded.backbone(backbone['input']), backbone['features']):
            assert rel_error(ours, official) <= 1e-4
    with pytest.raises(ValueError, match='no UperNet decode head .*SemanticFPN.from_checkpoint'):
        UperNet.from_checkpoint(str(file), backbone_name='van_b0')


# ------------------------------------------------------------------------------------------------ training
def test_loss_averages_as_mmseg():
    logits, labels = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 16, 16))
    labels[:, :5] = 255
    upsampled = F.interpolate(logits, size=(16, 16), mode='bilinear', align_corners=False)
    total = F.cross_entropy(upsampled, labels, ignore_index=255, reduction='sum')
    # mmseg's default: over all pixels, the ignored ones counting zero; avg_non_ignore: over the others
    assert torch.allclose(segmentation_loss(logits, labels), total / labels.numel())
    assert torch.allclose(segmentation_loss(logits, labels, avg_non_ignore=True), total / (labels != 255).sum())


def synthetic_segmentation_set(count=8, size=64, classes=4):
    """Images whose 16x16 cells are coloured by their class, with noise; a border of ignored pixels."""
    generator = torch.Generator().manual_seed(0)
    cells = torch.randint(0, classes, (count, size // 16, size // 16), generator=generator)
    labels = cells.repeat_interleave(16, 1).repeat_interleave(16, 2)
    colours = torch.rand(classes, 3, generator=generator)
    images = colours[labels].permute(0, 3, 1, 2) + 0.1 * torch.randn(count, 3, size, size, generator=generator)
    labels[:, :2] = 255
    return images, labels


def test_fine_tuning_lowers_the_loss_and_trains_every_parameter(one_thread):
    model = UperNet('unireplknet_a', 4, channels=32, aux_channels=16)
    images, labels = synthetic_segmentation_set()
    images = model.normalize(images)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    history = []
    for step in range(6):
        losses = model.loss(images, labels)
        assert set(losses) == {'decode', 'aux', 'loss'}
        optimizer.zero_grad()
        losses['loss'].backward()
        if step == 0:
            no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.isfinite().all()]
            assert not no_grad, no_grad
        optimizer.step()
        history.append(losses['loss'].item())
    assert history[-1] < 0.8 * history[0], history
    assert model(images).shape == (8, 4, 64, 64)


# ------------------------------------------------------------------------------------------------ export
def test_onnx_export_matches_pytorch(tmp_path, one_thread):
    from lkconv.deploy.onnx_export import export_onnx, run_onnx
    model = UperNet('unireplknet_a', 5, channels=32, aux_channels=16).eval()
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        expected = model(x)
    path = export_onnx(model, x, tmp_path / 'upernet.onnx', dynamic_batch=False)
    assert rel_error(run_onnx(path, x), expected) <= 1e-4
