"""Class names and the run's preprocessing travel with the model: deploy checkpoints, ONNX metadata_props
and timm hub folders (`lkconv hub-export`, read back by `timm.create_model('local-dir:...')`)."""
import json

import pytest
import timm
import torch
from timm.data import resolve_data_config
from timm.utils import reparameterize_model

from lkconv.cli import main
from lkconv.training.config import load_config
from lkconv.zoo.deploy_checkpoint import load_deploy_model, save_deploy_checkpoint
from lkconv.deploy.hub_export import save_hub_folder
from lkconv.deploy.onnx_export import export_onnx, onnx_metadata, read_onnx_metadata
from lkconv.training.train import train
from lkconv.training.validate import ValidateOptions, load_eval_model
from helpers import SMALLEST_PER_FAMILY, TINY_UNIREPLKNET, toy_overrides, write_toy_imagefolder

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py

# preprocessing unlike any model default, so that a test cannot pass on the model's own cfg
DATA_CONFIG = dict(input_size=(3, 48, 48), interpolation='bilinear', mean=(0.25, 0.5, 0.75), std=(0.1, 0.2, 0.3),
                   crop_pct=0.8, crop_mode='squash')
LABELS = ['cat', 'dog', 'fox']


def hub_export_command(argv):
    """`lkconv hub-export ARGV`."""
    return main(['hub-export', *argv])


@pytest.fixture(scope='module')
def deploy_checkpoint(tmp_path_factory):
    """A deploy checkpoint of a 3-class model with class names and DATA_CONFIG."""
    torch.manual_seed(0)
    model = reparameterize_model(timm.create_model('test_resnet', num_classes=3).eval())
    path = tmp_path_factory.mktemp('deploy') / 'deploy.pth'
    return save_deploy_checkpoint(model, 'test_resnet', dict(DATA_CONFIG, label_names=LABELS), path)


def test_deploy_checkpoint_keeps_preprocessing_and_class_names(deploy_checkpoint):
    checkpoint = torch.load(deploy_checkpoint, weights_only=True)
    assert checkpoint['label_names'] == LABELS and checkpoint['data_config'] == DATA_CONFIG
    _, data_config, name = load_deploy_model(checkpoint)
    assert name == 'test_resnet' and data_config == dict(DATA_CONFIG, label_names=LABELS)
    # what `lkconv validate / export --checkpoint` see, with a command-line override on top
    _, data_config, _ = load_eval_model(ValidateOptions(checkpoint=str(deploy_checkpoint), img_size=64))
    assert data_config['label_names'] == LABELS and data_config['input_size'] == (3, 64, 64)
    assert data_config['mean'] == DATA_CONFIG['mean'] and data_config['crop_mode'] == 'squash'


def test_deploy_checkpoint_of_the_earlier_layout_still_loads(deploy_checkpoint):
    """Files written before class names and construction arguments were stored hold neither key."""
    checkpoint = torch.load(deploy_checkpoint, weights_only=True)
    del checkpoint['label_names'], checkpoint['model_args']
    model, data_config, _ = load_deploy_model(checkpoint)
    assert data_config == DATA_CONFIG and model.num_classes == 3


def test_class_names_must_match_the_outputs(tmp_path):
    model = timm.create_model('test_resnet', num_classes=3).eval()
    with pytest.raises(ValueError, match='2 class names for a model with 3 outputs'):
        save_deploy_checkpoint(model, 'test_resnet', dict(DATA_CONFIG, label_names=['a', 'b']), tmp_path / 'd.pth')
    assert not (tmp_path / 'd.pth').exists()


def test_onnx_metadata_from_the_export_command(deploy_checkpoint, tmp_path, capsys):
    path = tmp_path / 'model.onnx'
    assert main(['export', '--checkpoint', str(deploy_checkpoint), '--out', str(path)]) == 0
    assert '(ok)' in capsys.readouterr().out
    metadata = read_onnx_metadata(path)
    assert metadata['architecture'] == 'test_resnet' and metadata['label_names'] == LABELS
    assert metadata['data_config'] == dict(DATA_CONFIG, input_size=[3, 48, 48], mean=[0.25, 0.5, 0.75],
                                           std=[0.1, 0.2, 0.3])
    # as a consumer reads it: onnxruntime's custom metadata, plain JSON strings
    import onnxruntime
    props = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider']).get_modelmeta() \
        .custom_metadata_map
    assert json.loads(props['label_names']) == LABELS and json.loads(props['data_config'])['crop_pct'] == 0.8


def test_onnx_without_class_names_has_no_label_names(tmp_path):
    model = timm.create_model('test_resnet', num_classes=3).eval()
    path = export_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / 'm.onnx', dynamic_batch=False,
                       metadata=onnx_metadata('test_resnet', DATA_CONFIG, model.num_classes))
    metadata = read_onnx_metadata(path)
    assert set(metadata) == {'architecture', 'data_config'} and metadata['data_config']['interpolation'] == 'bilinear'


def test_hub_folder_round_trips_through_timm(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=3).eval()
    out = save_hub_folder(model, dict(DATA_CONFIG, label_names=LABELS), tmp_path / 'hub')
    assert sorted(p.name for p in out.iterdir()) == ['config.json', 'model.safetensors']
    assert [p.name for p in tmp_path.iterdir()] == ['hub']  # no temporary folder left beside it
    assert (out / 'model.safetensors').stat().st_mode == (out / 'config.json').stat().st_mode  # not owner-only
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'test_resnet' and config['num_classes'] == 3
    assert config['label_names'] == LABELS and config['pretrained_cfg']['crop_mode'] == 'squash'

    rebuilt = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert rebuilt.pretrained_cfg['label_names'] == LABELS and rebuilt.num_classes == 3
    assert resolve_data_config(model=rebuilt) == dict(DATA_CONFIG, mean=list(DATA_CONFIG['mean']),
                                                      std=list(DATA_CONFIG['std']))
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


@pytest.mark.parametrize('name', SMALLEST_PER_FAMILY)
def test_hub_folder_of_every_family_rebuilds(name, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3).eval()
    out = save_hub_folder(model, dict(DATA_CONFIG, label_names=LABELS), tmp_path / 'hub')
    rebuilt = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_hub_folder_refuses_what_timm_cannot_rebuild(tmp_path):
    """A deploy-form state_dict does not fit the model timm builds from config.json."""
    model = reparameterize_model(timm.create_model('unireplknet_a', num_classes=3).eval())
    with pytest.raises(ValueError, match='timm cannot rebuild UniRepLKNet'):
        save_hub_folder(model, DATA_CONFIG, tmp_path / 'hub')
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
    """A tiny UniRepLKNet trained for one epoch with EMA, on a 2-class folder, with its own preprocessing."""
    data = write_toy_imagefolder(tmp_path_factory.mktemp('toy'))
    config = load_config(None, toy_overrides(data, tmp_path_factory.mktemp('runs'), 'hub') + TINY_UNIREPLKNET + [
        'train.epochs=1', 'train.model_ema=true', 'train.model_ema_decay=0.5', 'data.crop_pct=0.9',
        'data.interpolation=bilinear', 'data.mean=[0.4, 0.5, 0.6]', 'data.std=[0.2, 0.25, 0.3]'])
    return train(config)


def test_hub_export_of_a_training_run(trained_run, tmp_path, capsys):
    checkpoint = trained_run / 'best.pth.tar'
    out = tmp_path / 'hub'
    out.mkdir()  # an empty folder is accepted
    assert hub_export_command(['--checkpoint', str(checkpoint), '--out', str(out), '--use-ema']) == 0
    assert 'config.json, model.safetensors' in capsys.readouterr().out
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'unireplknet_a' and config['model_args']['dims'] == [8, 16, 32, 64]
    assert config['label_names'] == ['class0', 'class1']  # the run's image folder classes

    rebuilt = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    cfg = rebuilt.pretrained_cfg
    assert (cfg['num_classes'], cfg['input_size'], cfg['crop_pct'], cfg['interpolation']) == (2, (3, 32, 32), 0.9,
                                                                                              'bilinear')
    assert (cfg['mean'], cfg['std'], cfg['label_names']) == ([0.4, 0.5, 0.6], [0.2, 0.25, 0.3], ['class0', 'class1'])
    ema, data_config, _ = load_eval_model(ValidateOptions(checkpoint=str(checkpoint), use_ema=True))
    plain, _, _ = load_eval_model(ValidateOptions(checkpoint=str(checkpoint)))
    assert resolve_data_config(model=rebuilt) == {k: (list(v) if k in ('mean', 'std') else v)
                                                  for k, v in data_config.items() if k != 'label_names'}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), ema(x))  # the EMA weights, as asked
        assert not torch.allclose(rebuilt(x), plain(x))


def test_training_run_to_deploy_checkpoint_to_onnx(trained_run, tmp_path, capsys):
    """`lkconv reparam` then `lkconv export` of a run: the run's class names, preprocessing and model
    kwargs (a deploy checkpoint must rebuild the run's architecture, not the default variant) travel."""
    deploy, onnx_path = tmp_path / 'deploy.pth', tmp_path / 'model.onnx'
    assert main(['reparam', '--checkpoint', str(trained_run / 'best.pth.tar'), '--out', str(deploy)]) == 0
    checkpoint = torch.load(deploy, weights_only=True)
    assert checkpoint['label_names'] == ['class0', 'class1'] and checkpoint['model_args']['dims'] == [8, 16, 32, 64]
    assert checkpoint['data_config'] == dict(input_size=(3, 32, 32), interpolation='bilinear', mean=[0.4, 0.5, 0.6],
                                             std=[0.2, 0.25, 0.3], crop_pct=0.9, crop_mode='center')
    assert main(['export', '--checkpoint', str(deploy), '--out', str(onnx_path)]) == 0
    assert '(ok)' in capsys.readouterr().out
    metadata = read_onnx_metadata(onnx_path)
    assert metadata['label_names'] == ['class0', 'class1'] and metadata['data_config']['mean'] == [0.4, 0.5, 0.6]


def test_hub_export_refusals(trained_run, deploy_checkpoint, tmp_path):
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'notes.txt').write_text('keep me')
    with pytest.raises(SystemExit, match=r"lkconv hub-export: '.*mine' exists and is not an empty folder"):
        hub_export_command(['--checkpoint', str(trained_run / 'best.pth.tar'), '--out', str(mine)])
    assert [p.name for p in mine.iterdir()] == ['notes.txt'] and (mine / 'notes.txt').read_text() == 'keep me'
    with pytest.raises(SystemExit, match='is a deploy checkpoint'):
        hub_export_command(['--checkpoint', str(deploy_checkpoint), '--out', str(tmp_path / 'a')])
    with pytest.raises(SystemExit, match='give --checkpoint'):
        hub_export_command(['unireplknet_a', '--out', str(tmp_path / 'b')])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['mine']
