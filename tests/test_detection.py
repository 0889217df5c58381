"""Dense prediction: feature maps at arbitrary input sizes for every family, torchvision's Faster R-CNN on
`lkconv.detection.TimmFpnBackbone`, and the pyramid options of the official necks (mmdet's FPN, LSNetFPN), checked
against a functional re-computation. Uses the smallest model of each family and images of a few hundred pixels."""
import math
from collections import OrderedDict
from functools import partial

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
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


def test_frozen_stages_of_the_authors_downstream_backbones():
    """With feature norms or frozen BatchNorm statistics the extractor runs the model itself (timm's 'getter'
    wrapper): its stages are frozen by name inside the model."""
    backbone = TimmFpnBackbone('unireplknet_a', frozen_stages=2, model_args=dict(feature_norms=True)).train()
    assert backbone.frozen_modules == ['model.stem', 'model.stages.0', 'model.stages.1']
    model = backbone.body.model
    for name, module in [('stem', model.stem)] + [(f'stages.{i}', stage) for i, stage in enumerate(model.stages)]:
        frozen = name in ('stem', 'stages.0', 'stages.1')
        assert all(p.requires_grad != frozen for p in module.parameters()), name
        assert module.training != frozen, name
    assert all(p.requires_grad for p in model.feature_norms.parameters())
    with pytest.raises(ValueError, match='frozen_stages=5 is out of range'):
        TimmFpnBackbone('lsnet_t', frozen_stages=5, model_args=dict(img_size=896, norm_eval=True))


def test_timm_models_work_too():
    # timm's resnet lists its stem as feature level 0: the default takes the last four levels
    backbone = TimmFpnBackbone('resnet18', frozen_stages=2, out_channels=32)
    assert backbone.strides == [4, 8, 16, 32, 64]
    assert backbone.frozen_modules == ['conv1', 'bn1', 'act1', 'maxpool', 'layer1']
    assert backbone.min_input_size == 32  # no declared minimum: the largest stride
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 75, 101))
    assert [tuple(m.shape[-2:]) for m in maps.values()] == [(19, 26), (10, 13), (5, 7), (3, 4), (2, 2)]


# ----------------------------------------------------------------------------- the official necks' options
def _conv_norm(block: nn.Sequential, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """A Conv2dNormActivation-like block (conv or transposed conv, then an optional GroupNorm) in functional form."""
    conv = block[0]
    if isinstance(conv, nn.ConvTranspose2d):
        y = F.conv_transpose2d(x, conv.weight, conv.bias, stride=2)
    else:
        y = F.conv2d(x, conv.weight, conv.bias, stride=stride, padding=conv.kernel_size[0] // 2)
    if len(block) > 1:
        norm = block[1]
        assert isinstance(norm, nn.GroupNorm)
        y = F.group_norm(y, norm.num_groups, norm.weight, norm.bias, norm.eps)
    return y


def _reference_pyramid(backbone: TimmFpnBackbone, features, extra_levels: str, relu_before_extra_convs=False):
    """The pyramid as mmdet's FPN and LSNetFPN compute it, written from their forward: laterals, top-down sum of
    nearest-upsampled laterals, 3x3 output convs; transposed convs chained from the finest *summed* lateral, each
    followed by its own 3x3 conv, finest first; extra levels from the last input / output, chained."""
    fpn = backbone.fpn
    laterals = [_conv_norm(block, f) for block, f in zip(fpn.inner_blocks, features)]
    for i in range(len(laterals) - 1, 0, -1):
        laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode='nearest')
    outs = [_conv_norm(block, lateral) for block, lateral in zip(fpn.layer_blocks, laterals)]
    if fpn.finer_blocks is not None:
        extra_laterals, x = [], laterals[0]
        for upsample in fpn.finer_blocks.upsample:
            x = _conv_norm(upsample, x)
            extra_laterals.insert(0, x)
        # LSNetFPN pairs its 3x3 convs with the transposed outputs finest first: smooth[0] makes the finest level
        outs = [_conv_norm(s, lateral) for s, lateral in zip(fpn.finer_blocks.smooth, extra_laterals)] + outs
    if extra_levels == 'maxpool':
        outs.append(F.max_pool2d(outs[-1], 1, stride=2))
    elif extra_levels in ('on_input', 'on_output'):
        x = features[-1] if extra_levels == 'on_input' else outs[-1]
        for i, block in enumerate(fpn.extra_blocks.convs):
            x = _conv_norm(block, F.relu(x) if i and relu_before_extra_convs else x, stride=2)
            outs.append(x)
    return outs


OFFICIAL_NECKS = {
    # mmdet FPN(in_channels=dims, out_channels=256, num_outs=5): one max-pooled level on P5
    'unireplknet_cascade_mask_rcnn': ('unireplknet_a', {}, [4, 8, 16, 32, 64], ['0', '1', '2', '3', 'pool']),
    # LSNetFPN(start_level=0, num_outs=5, num_extra_trans_convs=1): a transposed-conv stride-4 level, no extra
    'lsnet_mask_rcnn': ('lsnet_t', dict(extra_levels='none', extra_fine_levels=1), [4, 8, 16, 32, 64],
                        ['up1', '0', '1', '2', '3']),
    # LSNetFPN(start_level=0, num_outs=5, add_extra_convs='on_input'): one stride-2 conv on the last input
    'lsnet_retinanet': ('lsnet_t', dict(extra_levels='on_input'), [8, 16, 32, 64, 128],
                        ['0', '1', '2', '3', 'down1']),
    # LSNetFPN(num_outs=4): the model's four levels
    'lsnet_semantic_fpn': ('lsnet_t', dict(extra_levels='none'), [8, 16, 32, 64], ['0', '1', '2', '3']),
}


@pytest.mark.parametrize('neck', list(OFFICIAL_NECKS))
def test_official_necks_levels_and_computation(neck):
    name, options, strides, names = OFFICIAL_NECKS[neck]
    torch.manual_seed(0)
    backbone = TimmFpnBackbone(name, out_channels=32, **options).eval()
    assert backbone.strides == strides
    assert backbone.level_names + backbone.extra_level_names == names
    assert backbone.fine_level_names == [n for n in names if n.startswith('up')]
    dims = backbone.body.feature_info.channels()
    assert [block[0].in_channels for block in backbone.fpn.inner_blocks] == dims
    x = torch.randn(1, 3, 128, 192)
    with torch.no_grad():
        maps = backbone(x)
        expected = _reference_pyramid(backbone, backbone.body(x), options.get('extra_levels', 'maxpool'))
    assert list(maps) == names
    assert [tuple(m.shape) for m in maps.values()] == [(1, 32, math.ceil(128 / s), math.ceil(192 / s)) for s in strides]
    assert len(expected) == len(maps)
    for key, reference in zip(maps, expected):
        torch.testing.assert_close(maps[key], reference, msg=key)


def test_finer_levels_chain_transposed_convs_and_leave_the_other_levels_as_torchvision():
    torch.manual_seed(0)
    backbone = TimmFpnBackbone('van_b0', out_channels=16, extra_fine_levels=2).eval()
    assert backbone.strides == [1, 2, 4, 8, 16, 32, 64]
    assert backbone.level_names == ['up2', 'up1', '0', '1', '2', '3'] and backbone.extra_level_names == ['pool']
    assert backbone.size_divisible == 32
    # the layout of LSNetFPN's `extra_trans_convs.i` (2x2 stride-2 transposed conv) and `extra_fpn_convs.i` (3x3)
    finer = backbone.fpn.finer_blocks
    assert [tuple(block[0].weight.shape) for block in finer.upsample] == [(16, 16, 2, 2)] * 2
    assert all(isinstance(block[0], nn.ConvTranspose2d) and block[0].stride == (2, 2) for block in finer.upsample)
    assert [tuple(block[0].weight.shape) for block in finer.smooth] == [(16, 16, 3, 3)] * 2

    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features = backbone.body(x)
        maps = backbone.fpn(OrderedDict(zip('0123', features)))
        expected = _reference_pyramid(backbone, features, 'maxpool')
        # the model's levels and the pooled one: what torchvision's own pyramid computes with the same weights
        plain = FeaturePyramidNetwork(backbone.body.feature_info.channels(), 16, extra_blocks=LastLevelMaxPool())
        missing, unexpected = plain.load_state_dict(backbone.fpn.state_dict(), strict=False)
        assert not missing and unexpected and all(k.startswith('finer_blocks.') for k in unexpected)
        plain_maps = plain(OrderedDict(zip('0123', features)))
    assert [tuple(m.shape[-2:]) for m in maps.values()] == [(64 // s, 96 // s) for s in backbone.strides[:-1]] + [(1, 2)]
    for key, reference in zip(maps, expected):
        torch.testing.assert_close(maps[key], reference, msg=key)
    for key, reference in plain_maps.items():
        torch.testing.assert_close(maps[key], reference, msg=key)


def test_strided_conv_extra_levels_on_input_and_on_output():
    torch.manual_seed(0)
    on_input = TimmFpnBackbone('lsnet_t', out_channels=32, extra_levels='on_input', num_extra_levels=2).eval()
    convs = on_input.fpn.extra_blocks.convs
    assert [tuple(c[0].weight.shape) for c in convs] == [(32, 384, 3, 3), (32, 32, 3, 3)]  # lsnet_t's last: 384
    assert all(c[0].stride == (2, 2) for c in convs)
    assert on_input.strides == [8, 16, 32, 64, 128, 256] and on_input.extra_level_names == ['down1', 'down2']

    # two convs from P5 with a ReLU between them: torchvision's LastLevelP6P7 with the same weights
    on_output = TimmFpnBackbone('van_b0', out_channels=32, extra_levels='on_output', num_extra_levels=2,
                                relu_before_extra_convs=True).eval()
    p6p7 = LastLevelP6P7(32, 32)
    p6p7.p6.load_state_dict(on_output.fpn.extra_blocks.convs[0][0].state_dict())
    p6p7.p7.load_state_dict(on_output.fpn.extra_blocks.convs[1][0].state_dict())

    x = torch.randn(1, 3, 128, 192)
    with torch.no_grad():
        maps = on_input(x)
        expected = _reference_pyramid(on_input, on_input.body(x), 'on_input')  # no ReLU between the convs
        maps_out = on_output(x)
        features = on_output.body(x)
        expected_out = _reference_pyramid(on_output, features, 'on_output', relu_before_extra_convs=True)
        torchvision_p6p7, _ = p6p7(list(maps_out.values())[:4], features, ['0', '1', '2', '3'])
    for key, reference in zip(maps, expected):
        torch.testing.assert_close(maps[key], reference, msg=key)
    for key, reference in zip(maps_out, expected_out):
        torch.testing.assert_close(maps_out[key], reference, msg=key)
    torch.testing.assert_close(maps_out['down1'], torchvision_p6p7[4])
    torch.testing.assert_close(maps_out['down2'], torchvision_p6p7[5])
    # without the ReLU the second level differs: the option is applied, not ignored
    assert not torch.allclose(maps['down2'], _conv_norm(convs[1], F.relu(maps['down1']), stride=2))


def test_norm_layer_follows_every_pyramid_conv():
    torch.manual_seed(0)
    backbone = TimmFpnBackbone('van_b0', out_channels=32, norm_layer=partial(nn.GroupNorm, 8), extra_fine_levels=1,
                               extra_levels='on_output', num_extra_levels=2, relu_before_extra_convs=True).eval()
    blocks = [*backbone.fpn.inner_blocks, *backbone.fpn.layer_blocks, *backbone.fpn.finer_blocks.upsample,
              *backbone.fpn.finer_blocks.smooth, *backbone.fpn.extra_blocks.convs]
    assert len(blocks) == 4 + 4 + 1 + 1 + 2
    for block in blocks:
        assert len(block) == 2 and block[0].bias is None, block
        assert isinstance(block[1], nn.GroupNorm) and block[1].num_groups == 8 and block[1].num_channels == 32
    norms = [m for m in backbone.fpn.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == len(blocks)  # nothing else in the pyramid is normalised
    for norm in norms:  # non-trivial affine terms, so that a norm applied in the wrong place shows
        nn.init.normal_(norm.weight, 1.0, 0.2)
        nn.init.normal_(norm.bias, 0.0, 0.2)
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        maps = backbone(x)
        expected = _reference_pyramid(backbone, backbone.body(x), 'on_output', relu_before_extra_convs=True)
    assert list(maps) == ['up1', '0', '1', '2', '3', 'down1', 'down2']
    for key, reference in zip(maps, expected):
        torch.testing.assert_close(maps[key], reference, msg=key)

    by_name = TimmFpnBackbone('van_b0', out_channels=32, norm_layer='batchnorm')
    assert all(isinstance(b[1], nn.BatchNorm2d) and b[0].bias is None for b in by_name.fpn.layer_blocks)
    assert isinstance(by_name.fpn.extra_blocks, LastLevelMaxPool)


def _masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    masks = torch.zeros(len(boxes), height, width, dtype=torch.uint8)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
        mask[y0:y1, x0:x1] = 1
    return masks


def test_mask_rcnn_trains_on_the_lsnet_stride4_level():
    torch.manual_seed(0)
    backbone = TimmFpnBackbone('lsnet_t', out_channels=64, extra_levels='none', extra_fine_levels=1)
    model = MaskRCNN(backbone, num_classes=3, min_size=160, max_size=256, mask_roi_pool=roi_align_for(backbone, 14),
                     **faster_rcnn_kwargs(backbone))
    assert model.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))  # torchvision's, for 4..64
    assert model.roi_heads.box_roi_pool.featmap_names == ['up1', '0', '1', '2', '3']
    images, targets = _synthetic_detection_batch()
    for image, target in zip(images, targets):
        target['masks'] = _masks(target['boxes'], *image.shape[-2:])

    model.train()
    losses = model(images, targets)
    assert set(losses) == {'loss_classifier', 'loss_box_reg', 'loss_objectness', 'loss_rpn_box_reg', 'loss_mask'}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    # RoI Align and the anchors saw the stride-4 level at its exact scale
    assert model.roi_heads.box_roi_pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64]
    assert model.roi_heads.mask_roi_pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64]
    finer = backbone.fpn.finer_blocks
    for param in [*finer.upsample.parameters(), *finer.smooth.parameters()]:
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0


def test_bad_neck_options_are_refused():
    cases = [
        (dict(extra_levels='on_lateral'), "extra_levels must be one of"),
        (dict(num_extra_levels=2), "num_extra_levels=2 needs extra_levels='on_input' or 'on_output'"),
        (dict(extra_levels='on_input', num_extra_levels=0), 'num_extra_levels must be at least 1'),
        (dict(relu_before_extra_convs=True, extra_levels='p6p7'), "relu_before_extra_convs needs"),
        (dict(extra_fine_levels=-1), 'extra_fine_levels must be 0 or more'),
        (dict(extra_fine_levels=4), 'extra_fine_levels=4 is too many: .* stride 8, .* at most 3 finer levels'),
        (dict(norm_layer='batch_norm_3x'), "unknown norm_layer 'batch_norm_3x'"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            TimmFpnBackbone('lsnet_t', out_channels=16, **options)
    assert TimmFpnBackbone('lsnet_t', out_channels=16, extra_fine_levels=3).strides[:3] == [1, 2, 4]
