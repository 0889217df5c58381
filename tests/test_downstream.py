"""The authors' detection/segmentation checkpoints (OpenMMLab files) as timm feature extractors.

Each parity fixture holds an mmdet/mmseg-shaped checkpoint (`meta` + `state_dict`, backbone under `backbone.`,
a few neck/head keys) and the official downstream backbone's four outputs for its input at 256x320. The
extractor is created the way a user does: `features_only=True`, the file as pretrained weights and
`downstream_backbone_args(name)`.
"""
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import lkconv  # noqa: F401  (registers the models)
from lkconv.zoo.downstream import PUBLISHED, downstream_backbone_args, find_published

from parity import load_fixture, rel_error

TOLERANCE = 1e-4  # the bound; an exact port reaches ~1e-6 (see the errors printed with -s)
MM_FIXTURES = {
    'unireplknet_a': 'unireplknet_a_mm_backbone.pt',
    'lsnet_t': 'lsnet_t_mm_backbone.pt',
    'van_b0': 'van_b0_mm_backbone.pt',
}
# the reduced RepLKNet-XL of replknet_xl_tiny.pt: layers, channels and kernels of its init_kwargs
REPLKNET_XL_TINY = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), large_kernel_sizes=(27, 27, 27, 13),
                        small_kernel_size=0, dw_ratio=1.5)


def _save(checkpoint, tmp_path: Path, name: str = 'downstream.pth') -> str:
    file = tmp_path / name
    torch.save(checkpoint, file)
    return str(file)


def _extractor(name: str, file: str, **kwargs):
    args = dict(downstream_backbone_args(name), **kwargs)
    return timm.create_model(name, features_only=True, pretrained=True, pretrained_cfg_overlay=dict(file=file),
                             **args).eval()


@pytest.fixture(scope='module', params=list(MM_FIXTURES))
def recorded(request, parity_dir):
    data = torch.load(parity_dir / MM_FIXTURES[request.param], weights_only=True)
    data['name'] = request.param
    return data


def test_features_equal_the_official_backbone(recorded, tmp_path):
    checkpoint = dict(recorded['checkpoint'])
    # the optimizer state a runner saves beside the weights is ignored
    checkpoint['optimizer'] = {'state': {}, 'param_groups': [{'lr': 1e-4}]}
    extractor = _extractor(recorded['name'], _save(checkpoint, tmp_path))
    with torch.no_grad():
        features = extractor(recorded['input'])
    errors = [rel_error(ours, ref) for ours, ref in zip(features, recorded['features'])]
    print(f"{recorded['name']}: relative errors {['%.1e' % e for e in errors]}")
    assert len(features) == len(recorded['features']) == 4
    assert max(errors) <= TOLERANCE, errors
    strides = [math.ceil(256 / f.shape[-2]) for f in features]
    assert extractor.feature_info.reduction() == strides


def test_replknet_xl_feature_norms_from_an_openmmlab_file(parity_dir, tmp_path):
    """RepLKNet-XL's `norm_intermediate_features` (official `stages.i.norm`), wrapped as an mmseg file."""
    recorded = load_fixture(parity_dir / 'replknet_xl_tiny.pt')
    state_dict = {f'backbone.{k}': v for k, v in recorded['downstream_state_dict'].items()}
    state_dict['decode_head.conv_seg.weight'] = torch.zeros(150, 512, 1, 1)
    file = _save({'meta': {'mmseg_version': '0.30.0'}, 'state_dict': state_dict}, tmp_path)
    extractor = _extractor('replknet_xl', file, **REPLKNET_XL_TINY)
    with torch.no_grad():
        features = extractor(recorded['input'])
    errors = [rel_error(ours, ref) for ours, ref in zip(features, recorded['downstream_outputs'])]
    print(f'replknet_xl (reduced): relative errors {["%.1e" % e for e in errors]}')
    assert len(features) == 4 and max(errors) <= TOLERANCE, errors


def test_lsnet_keeps_batchnorm_statistics_while_fine_tuning(parity_dir, tmp_path):
    recorded = torch.load(parity_dir / MM_FIXTURES['lsnet_t'], weights_only=True)
    extractor = _extractor('lsnet_t', _save(recorded['checkpoint'], tmp_path))
    assert extractor.feature_info.reduction() == [8, 16, 32, 64]
    x = recorded['input'][:1, :, :128, :192]
    with torch.no_grad():
        evaluated = extractor(x)
    before = {k: v.clone() for k, v in extractor.state_dict().items() if 'running_' in k}
    extractor.train()
    trained = extractor(x)
    sum(f.sum() for f in trained).backward()
    batchnorms = [m for m in extractor.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert batchnorms and not any(m.training for m in batchnorms) and extractor.training
    assert all(torch.equal(v, extractor.state_dict()[k]) for k, v in before.items())
    for ours, ref in zip(trained, evaluated):  # no dropout or drop path: training mode computes the same
        torch.testing.assert_close(ours.detach(), ref)
    assert all(p.grad is not None for p in extractor.parameters() if p.requires_grad)
    # the table of stage 4's attention bias has the downstream backbone's 196 (14x14) entries
    tables = [v for k, v in extractor.state_dict().items() if k.endswith('attention_biases')]
    assert tables and all(t.shape == (4, 196) for t in tables)


def test_feature_norms_start_empty_from_classification_weights(parity_dir, tmp_path):
    """Fine-tuning the downstream UniRepLKNet from ImageNet weights, as the official configs: the output
    norms start as initialised (weight 1, bias 0) and everything else loads from the classification file."""
    recorded = load_fixture(parity_dir / 'unireplknet_a.pt')
    file = _save(recorded['state_dict'], tmp_path, 'unireplknet_a_official.pth')
    extractor = _extractor('unireplknet_a', file)
    plain = timm.create_model('unireplknet_a', features_only=True, pretrained=True,
                              pretrained_cfg_overlay=dict(file=file)).eval()
    norms = extractor.model.feature_norms
    assert all(torch.equal(n.weight, torch.ones_like(n.weight)) and not n.bias.any() for n in norms)
    x = recorded['input'][:1]
    with torch.no_grad():
        normalised, raw = extractor(x), plain(x)
    for ours, stage in zip(normalised, raw):
        expected = F.layer_norm(stage.permute(0, 2, 3, 1), stage.shape[1:2], eps=1e-6).permute(0, 3, 1, 2)
        torch.testing.assert_close(ours, expected)


def test_output_norms_need_feature_norms(parity_dir, tmp_path):
    recorded = torch.load(parity_dir / MM_FIXTURES['unireplknet_a'], weights_only=True)
    file = _save(recorded['checkpoint'], tmp_path)
    with pytest.raises(ValueError, match=r'feature_norms=True'):
        timm.create_model('unireplknet_a', features_only=True, pretrained=True,
                          pretrained_cfg_overlay=dict(file=file))


@pytest.mark.parametrize('change', ['missing', 'unexpected'])
def test_backbone_weights_load_strictly(parity_dir, tmp_path, change):
    recorded = torch.load(parity_dir / MM_FIXTURES['van_b0'], weights_only=True)
    state_dict = dict(recorded['checkpoint']['state_dict'])
    if change == 'missing':
        del state_dict['backbone.block2.1.mlp.fc1.weight']
    else:
        state_dict['backbone.block2.1.mlp.extra.weight'] = torch.zeros(3)
    file = _save({'meta': {}, 'state_dict': state_dict}, tmp_path)
    with pytest.raises(ValueError, match=rf'1 {change} \(stages\.1\.blocks\.1\.mlp\.'):
        _extractor('van_b0', file)


def test_published_checkpoints_table():
    names = set(timm.list_models())
    assert {c.model.split('_')[0] for c in PUBLISHED} == {'unireplknet', 'lsnet', 'van', 'replknet'}
    assert len({c.file for c in PUBLISHED}) == len(PUBLISHED)
    for checkpoint in PUBLISHED:
        assert checkpoint.model in names, checkpoint
        assert checkpoint.head in {'upernet', 'semantic_fpn', 'cascade_mask_rcnn', 'mask_rcnn', 'retinanet', 'fcos'}
        assert checkpoint.file.endswith('.pth') and checkpoint.page.startswith('https://')
        assert not checkpoint.url or checkpoint.url.startswith('https://')
        assert checkpoint.test_scale and (checkpoint.test_mode == 'whole') == (not checkpoint.slide_crop)
        assert find_published(f'/downloads/{checkpoint.file}') is checkpoint
    assert find_published('unireplknet_t_in1k_224_acc83.21.pth') is None
    assert downstream_backbone_args('unireplknet_b') == {'feature_norms': True}
    assert downstream_backbone_args('replknet_xl') == {'feature_norms': True}
    assert downstream_backbone_args('replknet_31b') == {} == downstream_backbone_args('van_b2')
    assert downstream_backbone_args('lsnet_s') == {'img_size': 896, 'norm_eval': True}


def test_docs_list_every_published_checkpoint():
    docs = (Path(__file__).resolve().parents[1] / 'docs' / 'dense_prediction.md').read_text()
    unlisted = [c.file for c in PUBLISHED if f'| `{c.model}` | {c.pretrain} |' not in docs or f'`{c.file}`' not in docs]
    assert not unlisted, unlisted


def test_lsnet_downstream_tables_need_their_grid(parity_dir, tmp_path):
    recorded = torch.load(parity_dir / MM_FIXTURES['lsnet_t'], weights_only=True)
    file = _save(recorded['checkpoint'], tmp_path)
    with pytest.raises(ValueError, match=r'14x14 token grid .* img_size=896'):
        timm.create_model('lsnet_t', features_only=True, pretrained=True, pretrained_cfg_overlay=dict(file=file))
