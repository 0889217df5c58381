"""Dense prediction: feature maps at arbitrary input sizes for every family, and torchvision's Faster R-CNN on
`lkconv.detection.TimmFpnBackbone`. Uses the smallest model of each family and images of a few hundred pixels."""
import math

import pytest
import timm
import torch
import torch.nn as nn
from torchvision.models.detection import FasterRCNN
from torchvision.ops.misc import FrozenBatchNorm2d

from lkconv.detection import TimmFpnBackbone, anchor_generator_for, faster_rcnn_kwargs, roi_align_for

# How each family's downsampling rounds a size that its stride does not divide:
#   padded strided convs with k = 2p + 1 give floor((H + 2p - k) / s) + 1 = floor((H - 1) / s) + 1 = ceil(H / s),
#     and ceil composes: ceil(ceil(H / a) / b) = ceil(H / ab);
#   unpadded patchify convs (k = s, p = 0: InceptionNeXt's 4x4/s4 stem, 2x2/s2 downsamples) give floor(H / s).
SIZE_RULE = {
    'unireplknet_a': math.ceil,  # 3x3/s2 p1 stem convs and downsamples
    'inceptionnext_atto': math.floor,
    'van_b0': math.ceil,  # 7x7/s4 p3 stem, 3x3/s2 p1 downsamples
    'lsnet_t': math.ceil,  # three 3x3/s2 p1 stem convs, 3x3/s2 p1 depthwise downsamples
    'fdconv_inceptionnext_atto': math.floor,  # InceptionNeXt's stem and downsamples (FDConv only in the MLPs)
}
FAMILY_MODELS = list(SIZE_RULE)
EXPECTED_REDUCTIONS = {name: [4, 8, 16, 32] for name in FAMILY_MODELS}
EXPECTED_REDUCTIONS['lsnet_t'] = [8, 16, 32, 64]
# 800x1216 (a usual detection resize) scaled down, and a size no stride divides
SIZES = [(200, 304), (197, 263)]


def _conv_arithmetic_sizes(model: nn.Module, size):
    """{cumulative stride: (H, W)} after each strided conv of `model`, in module order, by the conv formula."""
    h, w = size
    stride, sizes = 1, {}
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.stride[0] > 1:
            (kh, kw), (sh, sw), (ph, pw), (dh, dw) = module.kernel_size, module.stride, module.padding, module.dilation
            h = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
            w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
            stride *= sh
            sizes[stride] = (h, w)
    return sizes


@pytest.mark.parametrize('size', SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('name', FAMILY_MODELS)
def test_feature_maps_at_arbitrary_sizes(name, size):
    torch.manual_seed(0)
    features = timm.create_model(name, features_only=True).eval()
    torch.manual_seed(0)  # the same weights in the full model
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        maps = features(x)
        taps = model.forward_intermediates(x, intermediates_only=True)

    info = features.feature_info
    assert len(maps) == 4
    assert info.reduction() == EXPECTED_REDUCTIONS[name]
    assert [m.shape[1] for m in maps] == info.channels()
    rounding, by_stride = SIZE_RULE[name], _conv_arithmetic_sizes(model, size)
    for feature, tap, reduction in zip(maps, taps, info.reduction()):
        expected = tuple(rounding(s / reduction) for s in size)
        assert tuple(feature.shape[-2:]) == expected, (reduction, tuple(feature.shape))
        assert by_stride[reduction] == expected  # the rule is what the model's strided convs compute
        torch.testing.assert_close(feature, tap)
    # the two sizes are chosen so that floor and ceil differ at the last level: the rule is really tested
    assert math.floor(size[0] / info.reduction()[-1]) != math.ceil(size[0] / info.reduction()[-1])


def _synthetic_detection_batch():
    """Two images of different sizes with boxes of both classes. Resized for min_size 160 they batch to 160x245,
    which padding to 32 would leave at 160 rows: not a multiple of LSNet's stride 64."""
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 150, 230, generator=gen), torch.rand(3, 140, 200, generator=gen)]
    targets = [
        dict(boxes=torch.tensor([[10., 20., 90., 120.], [50., 40., 140., 100.]]), labels=torch.tensor([1, 2])),
        dict(boxes=torch.tensor([[30., 30., 120., 130.]]), labels=torch.tensor([2])),
    ]
    return images, targets


@pytest.mark.parametrize('name', FAMILY_MODELS)
def test_faster_rcnn_trains_and_detects(name):
    torch.manual_seed(0)
    backbone = TimmFpnBackbone(name)
    model = FasterRCNN(backbone, num_classes=3, min_size=160, max_size=256, **faster_rcnn_kwargs(backbone))
    images, targets = _synthetic_detection_batch()

    # padding to the backbone's largest stride makes every level's stride exact, which is what
    # torchvision's AnchorGenerator assumes when it infers strides as image size // map size
    image_list, _ = model.transform(images)
    padded = tuple(image_list.tensors.shape[-2:])
    assert all(s % backbone.size_divisible == 0 for s in padded)
    with torch.no_grad():
        maps = backbone(image_list.tensors)
    assert list(maps) == backbone.level_names + backbone.extra_level_names
    for (key, feature), stride in zip(maps.items(), backbone.strides):
        assert feature.shape[1] == backbone.out_channels
        expected = tuple(math.ceil(s / stride) for s in padded)
        assert tuple(feature.shape[-2:]) == expected, (key, stride)
        if key in backbone.level_names:
            assert all(e * stride == s for e, s in zip(expected, padded))

    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.01, momentum=0.9)
    body_params = [p for p in backbone.body.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in body_params]
    losses = model(images, targets)
    assert set(losses) == {'loss_classifier', 'loss_box_reg', 'loss_objectness', 'loss_rpn_box_reg'}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in trainable if p.grad is not None)
    optimizer.step()
    moved = [not torch.equal(b, p) for b, p in zip(before, body_params)]
    # the stem is farthest from the losses: if it moved, gradients crossed the whole backbone (some tensors
    # legitimately stay, e.g. LSNet's FFN inputs behind zero-initialised BatchNorms, or updates below rounding)
    assert moved[0] and sum(moved) > len(moved) // 2, f'{sum(moved)} of {len(moved)} backbone tensors moved'

    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for det, image in zip(detections, images):
        assert set(det) == {'boxes', 'labels', 'scores'}
        assert det['boxes'].shape == (len(det['scores']), 4) and len(det['scores']) > 0
        assert torch.isfinite(det['boxes']).all()
        assert (det['boxes'][:, 2] <= image.shape[2]).all() and (det['boxes'][:, 3] <= image.shape[1]).all()
        assert set(det['labels'].tolist()) <= {1, 2}


def test_helpers_follow_the_strides_of_lsnet():
    backbone = TimmFpnBackbone('lsnet_t', out_indices=(1, 2, 3), extra_levels='p6p7', out_channels=64)
    assert backbone.strides == [16, 32, 64, 128, 256]
    assert backbone.level_names == ['0', '1', '2'] and backbone.extra_level_names == ['p6', 'p7']
    assert backbone.size_divisible == 64
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 197, 263))
    assert list(maps) == ['0', '1', '2', 'p6', 'p7']
    assert [tuple(m.shape[-2:]) for m in maps.values()] == [
        (math.ceil(197 / s), math.ceil(263 / s)) for s in (16, 32, 64, 128, 256)]
    assert all(m.shape[1] == 64 for m in maps.values())

    anchors = anchor_generator_for(backbone)
    assert anchors.sizes == ((128,), (256,), (512,), (1024,), (2048,))
    assert anchors.num_anchors_per_location() == [3] * 5
    assert roi_align_for(backbone, output_size=14).featmap_names == ['0', '1', '2']
    with pytest.raises(ValueError, match='anchor size tuples'):
        anchor_generator_for(backbone, sizes=((32,), (64,)))
    kwargs = faster_rcnn_kwargs(backbone)
    assert kwargs['size_divisible'] == 64
    assert kwargs['image_mean'] == list(backbone.body.pretrained_cfg['mean'])
    with pytest.raises(ValueError, match='extra_levels'):
        TimmFpnBackbone('lsnet_t', extra_levels='p6')


def test_frozen_stages_and_frozen_batchnorm():
    backbone = TimmFpnBackbone('van_b0', frozen_stages=2, freeze_bn=True).train()
    frozen = {'stem_conv', 'stem_bn', 'stages_0', 'stages_1'}
    assert set(backbone.frozen_modules) == frozen
    for name, child in backbone.body.named_children():
        trainable = [p.requires_grad for p in child.parameters()]
        assert not any(trainable) if name in frozen else all(trainable), name
        assert child.training == (name not in frozen), name
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.body.stages_3.modules())
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():  # with every BatchNorm frozen, train and eval mode compute the same maps
        train_maps = backbone(x)
        eval_maps = backbone.eval()(x)
    for a, b in zip(train_maps.values(), eval_maps.values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match='frozen_stages=5 is out of range'):
        TimmFpnBackbone('van_b0', frozen_stages=5)


def test_timm_models_work_too():
    # timm's resnet lists its stem as feature level 0: the default takes the last four levels
    backbone = TimmFpnBackbone('resnet18', frozen_stages=2, out_channels=32)
    assert backbone.strides == [4, 8, 16, 32, 64]
    assert backbone.frozen_modules == ['conv1', 'bn1', 'act1', 'maxpool', 'layer1']
    assert backbone.min_input_size == 32  # no declared minimum: the largest stride
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 75, 101))
    assert [tuple(m.shape[-2:]) for m in maps.values()] == [(19, 26), (10, 13), (5, 7), (3, 4), (2, 2)]
