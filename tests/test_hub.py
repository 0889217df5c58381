"""The first path users take, `timm.create_model(name, pretrained=True)`, through timm's real Hugging Face
download code, offline; and pretrained classifiers whose size disagrees with the pretrained cfg.

A local hub cache (`models--{org}--{name}/snapshots/{commit}/{file}` + `refs/main`) holds, at each cfg's
`hf_hub_id` / `hf_hub_filename`, a weights file in the layout its authors published: the official parity
weights for the smallest variant of each family, and a random ResNet-50 for FDConv's ResNet base. The models
are created in a subprocess with HF_HUB_CACHE / HF_HUB_OFFLINE set (huggingface_hub reads them at import),
and with an empty torch hub dir, so weights can only come from that cache.
"""
import argparse
import hashlib
import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from timm.models import get_pretrained_cfg

from lkconv.layers import convert_state_dict_to_fdconv
from lkconv.models import unireplknet
from lkconv.models._backbone import ClassifierMismatchError, check_classifier_size
from parity import load_fixture, rel_error
from helpers import randomize_batchnorm

TOL = 1e-4

# the smallest variant of each family: parity fixture and the container the authors' file uses
BASE_CASES = {
    'unireplknet_a.in1k': ('unireplknet_a.pt', 'bare'),  # raw state_dict (.pth)
    'inceptionnext_atto.sail_in1k': ('inceptionnext_atto.pt', 'bare'),  # timm's copy: model.safetensors
    'van_b0.in1k': ('van_b0.pt', 'timm_train'),  # timm-train CheckpointSaver .pth.tar
    'lsnet_t.in1k': ('lsnet_t.pt', 'bare'),  # raw state_dict (.pth)
}
# FDConv models download their base network's file and convert it on the fly
FDCONV_CASES = {
    'fdconv_unireplknet_a.in1k': 'unireplknet_a.in1k',
    'fdconv_inceptionnext_atto.sail_in1k': 'inceptionnext_atto.sail_in1k',
    'fdconv_resnet50.a1_in1k': 'resnet50.a1_in1k',
}
# timm's hub repos hold both model.safetensors and pytorch_model.bin; timm falls back to the .bin
BIN_CASE = 'inceptionnext_atto.sail_in1k@pytorch_model.bin'

_CREATE_SCRIPT = textwrap.dedent('''
    import json, sys, traceback
    import timm, torch
    import lkconv
    for case in json.loads(sys.argv[1]):
        try:
            model = timm.create_model(case['name'], pretrained=True, cache_dir=case['cache_dir']).eval()
            with torch.no_grad():
                logits = model(torch.load(case['input']))
            result = dict(state_dict=model.state_dict(), logits=logits)
        except Exception:
            result = dict(error=traceback.format_exc())
        torch.save(result, case['out'])
''')


def _hub_file(cache: Path, repo_id: str, filename: str) -> Path:
    """Where huggingface_hub's cache keeps `filename` of `repo_id` at the commit `refs/main` points to."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / 'refs').mkdir(parents=True, exist_ok=True)
    (repo / 'refs' / 'main').write_text(commit)
    path = repo / 'snapshots' / commit / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _write_weights(cache: Path, name: str, state_dict, layout: str = 'bare', filename: str = None) -> None:
    cfg = get_pretrained_cfg(name)
    assert cfg.hf_hub_id, f'{name} has no hub location'
    path = _hub_file(cache, cfg.hf_hub_id, filename or cfg.hf_hub_filename or 'model.safetensors')
    if path.suffix == '.safetensors':
        safetensors.torch.save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
        return
    if layout == 'timm_train':
        state_dict = {
            'epoch': 299, 'arch': name.split('.')[0], 'version': 2, 'metric': 75.4,
            'optimizer': {'state': {}, 'param_groups': []}, 'args': argparse.Namespace(model=name.split('.')[0]),
            'state_dict': {'module.' + k: v for k, v in state_dict.items()},
        }
    torch.save(state_dict, path)


@pytest.fixture(scope='module')
def hub(parity_dir, tmp_path_factory):
    """Writes the hub caches, creates every case in one offline subprocess; the cases' inputs and results."""
    root = tmp_path_factory.mktemp('hub')
    cache, bin_cache = root / 'hf_home' / 'hub', root / 'bin_cache'
    written, inputs = {}, {}
    for name, (fixture_file, layout) in BASE_CASES.items():
        fixture = load_fixture(parity_dir / fixture_file)
        written[name] = fixture['state_dict']
        inputs[name] = dict(input=fixture['input'][:1], logits=fixture['logits'][:1])
        _write_weights(cache, name, fixture['state_dict'], layout)
    _write_weights(bin_cache, 'inceptionnext_atto.sail_in1k', written['inceptionnext_atto.sail_in1k'],
                   filename='pytorch_model.bin')
    inputs[BIN_CASE] = inputs['inceptionnext_atto.sail_in1k']

    resnet = randomize_batchnorm(timm.create_model('resnet50')).eval()  # no zero-init BNs hiding conv3
    written['resnet50.a1_in1k'] = resnet.state_dict()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        inputs['resnet50.a1_in1k'] = dict(input=x, logits=resnet(x))
    _write_weights(cache, 'resnet50.a1_in1k', resnet.state_dict())
    for name, base in FDCONV_CASES.items():
        inputs[name] = inputs[base]

    cases = []
    for i, (name, data) in enumerate(inputs.items()):
        torch.save(data['input'], root / f'input{i}.pt')
        model_name, _, filename = name.partition('@')
        cases.append(dict(name=model_name, cache_dir=str(bin_cache) if filename else None,
                          input=str(root / f'input{i}.pt'), out=str(root / f'out{i}.pt')))
    env = dict(os.environ, HF_HOME=str(root / 'hf_home'), HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE='1',
               TORCH_HOME=str(root / 'torch_home'))
    env.pop('TIMM_USE_OLD_CACHE', None)
    proc = subprocess.run([sys.executable, '-c', _CREATE_SCRIPT, json.dumps(cases)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {name: torch.load(case['out'], weights_only=False) for name, case in zip(inputs, cases)}
    return dict(written=written, inputs=inputs, results=results)


def _result(hub, name):
    result = hub['results'][name]
    assert 'error' not in result, f'{name}: pretrained=True failed offline:\n{result["error"]}'
    return result


@pytest.mark.parametrize('name', list(BASE_CASES) + [BIN_CASE])
def test_pretrained_from_hub_cache(hub, name):
    result = _result(hub, name)
    model_name = name.partition('@')[0]
    model = timm.create_model(model_name)
    filter_fn = importlib.import_module(type(model).__module__).checkpoint_filter_fn
    written = hub['written'][model_name]
    if BASE_CASES[model_name][1] == 'timm_train':
        written = dict(state_dict={'module.' + k: v for k, v in written.items()})
    expected = filter_fn(written, model)
    loaded = result['state_dict']
    assert set(loaded) == set(model.state_dict())
    unequal = [k for k, v in expected.items() if not torch.equal(loaded[k], v)]
    assert not unequal, f'weights differ from the hub file: {unequal[:5]}'
    # the official model's output on the same weights
    assert rel_error(result['logits'], hub['inputs'][name]['logits']) < TOL


@pytest.mark.parametrize('name', list(FDCONV_CASES))
def test_fdconv_pretrained_from_base_weights_in_hub_cache(hub, name):
    result = _result(hub, name)
    base = FDCONV_CASES[name]
    model = timm.create_model(name.partition('.')[0])
    written = hub['written'][base]
    if name.startswith('fdconv_unireplknet'):
        written = unireplknet.checkpoint_filter_fn(written, model)
    expected = convert_state_dict_to_fdconv(written, model)
    loaded = result['state_dict']
    assert set(loaded) == set(model.state_dict())
    # the modulation branches keep their (neutral) initialisation; everything else comes from the file
    modulation = ('.ksm_global.', '.ksm_local.', '.fbm.')
    unequal = [k for k, v in expected.items() if not any(m in k for m in modulation) and not torch.equal(loaded[k], v)]
    assert not unequal, f'weights differ from the converted hub file: {unequal[:5]}'
    # neutral attentions: the converted network computes its base network
    assert rel_error(result['logits'], hub['inputs'][name]['logits']) < 1e-5


# ------------------------------------------------------------------------- classifier size mismatch
FAMILIES = {  # every way lkconv builds a model (the FDConv ResNet shortened: the mechanism is its classifier)
    'unireplknet_a': {}, 'inceptionnext_atto': {}, 'van_b0': {}, 'lsnet_t': {}, 'fdconv_inceptionnext_atto': {},
    'fdconv_resnet50': dict(layers=(1, 1, 1, 1)),
}


def _create(name, file, overlay=None, **kwargs):
    overlay = dict(file=str(file), **(overlay or {}))
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **FAMILIES[name], **kwargs)


@pytest.mark.parametrize('name', list(FAMILIES))
def test_classifier_size_mismatch_is_an_error(name, tmp_path):
    """A 7-class checkpoint under the 1000-class cfg: timm would drop its classifier (num_classes=7) or fail
    with a bare size mismatch (num_classes=1000); both say what the file has and how to keep or replace it."""
    source = timm.create_model(name, num_classes=7, **FAMILIES[name])
    file = tmp_path / 'seven_classes.pth'
    torch.save(source.state_dict(), file)
    classifier = source.pretrained_cfg['classifier']
    classifier = classifier if isinstance(classifier, str) else classifier[0]

    with pytest.raises(ClassifierMismatchError) as info:
        _create(name, file, num_classes=7)
    message = str(info.value)
    assert f'7-class classifier ({classifier})' in message and 'says 1000 classes' in message
    assert 'discard' in message and f"pretrained_cfg_overlay=dict(file='{file}', num_classes=7)" in message

    with pytest.raises(ClassifierMismatchError, match=r'built with num_classes=1000.*pass num_classes=7 and '
                                                      r'pretrained_cfg_overlay=dict\(.*num_classes=7\)') as info:
        _create(name, file)
    assert isinstance(info.value, RuntimeError)  # as the size mismatch callers that catch failed loads expect

    # the fixes: keep the checkpoint's head, or start a new one of another size
    model = _create(name, file, num_classes=7, overlay=dict(num_classes=7))
    torch.testing.assert_close(model.get_classifier().weight, source.get_classifier().weight, rtol=0, atol=0)
    model = _create(name, file, num_classes=5, overlay=dict(num_classes=7))
    assert model.get_classifier().weight.shape[0] == 5
    # features only: no classifier to keep
    timm.create_model(name, pretrained=True, features_only=True, pretrained_cfg_overlay=dict(file=str(file)),
                      **FAMILIES[name])


def test_classifier_mismatch_names_the_matching_tag():
    # the case users hit: an ImageNet-22k file loaded under the default (ImageNet-1k) tag
    model = timm.create_model('unireplknet_s', num_classes=21841, device='meta')
    state_dict = {'head.fc.weight': torch.empty(21841, 768, device='meta')}
    with pytest.raises(ClassifierMismatchError, match=r"21841-class classifier \(head.fc\), but the pretrained cfg "
                                                      r"'unireplknet_s.in1k' says 1000 classes.*'unireplknet_s.in22k'"):
        check_classifier_size(state_dict, model)
    model = timm.create_model('unireplknet_s.in22k', device='meta')
    check_classifier_size(state_dict, model)  # the tag that fits
