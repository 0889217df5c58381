"""`lkconv validate`: accuracy of training checkpoints (with the run's own preprocessing, optionally
re-parameterised) and of bare weight files (with the model's pretrained-config preprocessing)."""
import csv
import json

import pytest
import timm
import torch
from timm.data import create_dataset, create_transform, resolve_data_config

from lkconv.cli import main
from lkconv.training.config import load_config
from lkconv.training.train import train
from lkconv.training.validate import ValidateOptions, validate
from helpers import TINY_UNIREPLKNET, read_summary, toy_overrides

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py


@pytest.fixture(scope='module')
def trained_run(toy_data, tmp_path_factory):
    """A UniRepLKNet (re-parameterisable) trained for one epoch, with EMA."""
    out = tmp_path_factory.mktemp('runs')
    config = load_config(None, toy_overrides(toy_data, out, 'unireplknet') + TINY_UNIREPLKNET + [
        'train.epochs=1', 'train.model_ema=true', 'train.model_ema_decay=0.5', 'train.model_ema_eval=false',
        'data.crop_pct=0.9'])
    return train(config)


def test_training_checkpoint_is_evaluated_as_in_training(trained_run, toy_data):
    result = validate(ValidateOptions(data_dir=str(toy_data), checkpoint=str(trained_run / 'last.pth.tar'),
                                      split='val', workers=0, batch_size=3))
    row = read_summary(trained_run)[-1]
    assert result['model'] == 'unireplknet_a' and result['images'] == 8
    assert result['top1'] == pytest.approx(float(row['eval_top1']), abs=1e-3)
    assert result['loss'] == pytest.approx(float(row['eval_loss']), rel=1e-4)
    assert (result['img_size'], result['crop_pct']) == (32, 0.9)  # the run's preprocessing, not the model's 224


def test_reparameterised_model_scores_the_same(trained_run, toy_data):
    options = dict(data_dir=str(toy_data), checkpoint=str(trained_run / 'last.pth.tar'), split='val', workers=0)
    plain = validate(ValidateOptions(**options))
    fused = validate(ValidateOptions(**options, reparam=True))
    assert fused['reparameterized'] and fused['param_count'] < plain['param_count']
    assert fused['top1'] == plain['top1'] and fused['loss'] == pytest.approx(plain['loss'], rel=1e-3)


def test_ema_weights_are_selectable(trained_run, toy_data):
    options = dict(data_dir=str(toy_data), checkpoint=str(trained_run / 'last.pth.tar'), split='val', workers=0)
    assert validate(ValidateOptions(**options, use_ema=True))['loss'] != validate(ValidateOptions(**options))['loss']


def test_bare_weights_use_the_models_eval_preprocessing(toy_data, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=2).eval()
    weights = tmp_path / 'weights.pth'
    torch.save(model.state_dict(), weights)
    result = validate(ValidateOptions(data_dir=str(toy_data), model='test_resnet', checkpoint=str(weights),
                                      num_classes=2, split='val', workers=0))
    # the same by hand: the model's test-time transform, one image at a time
    data_config = resolve_data_config(model=model, use_test_size=True)
    dataset = create_dataset('', root=str(toy_data), split='val', transform=create_transform(**data_config))
    with torch.no_grad():
        hits = sum(int(model(x[None]).argmax(1).item() == y) for x, y in dataset)
    assert result['top1'] == pytest.approx(100 * hits / len(dataset))
    assert result['img_size'] == data_config['input_size'][-1] and result['crop_pct'] == data_config['crop_pct']


def test_cli_prints_and_writes_the_result(trained_run, toy_data, tmp_path, capsys):
    results = tmp_path / 'result.csv'
    main(['validate', '--checkpoint', str(trained_run / 'last.pth.tar'), '--data-dir', str(toy_data),
          '--split', 'val', '-j', '0', '--reparam', '--results-file', str(results)])
    out = capsys.readouterr().out
    assert out.startswith('unireplknet_a: top-1 ') and 're-parameterised' in out
    printed = json.loads(out.split('--result\n', 1)[1])
    with open(results, newline='') as f:
        written = next(csv.DictReader(f))
    assert float(written['top1']) == printed['top1'] and written['model'] == 'unireplknet_a'


def test_cli_errors(trained_run, toy_data, tmp_path):
    weights = tmp_path / 'weights.pth'
    torch.save(timm.create_model('test_resnet', num_classes=2).state_dict(), weights)
    with pytest.raises(SystemExit, match='name the model'):
        main(['validate', '--checkpoint', str(weights), '--data-dir', str(toy_data), '--split', 'val'])
    with pytest.raises(SystemExit, match=r'(?s)does not fit test_resnet \(for another class count, pass --num-classes\)'
                                         r'.*size mismatch for fc.weight'):
        main(['validate', '--model', 'test_resnet', '--checkpoint', str(weights), '--data-dir', str(toy_data),
              '--split', 'val'])
    torch.save(timm.create_model('test_resnet', num_classes=3).state_dict(), weights)
    with pytest.raises(SystemExit, match='the dataset has 2 classes but test_resnet has 3 outputs'):
        main(['validate', '--model', 'test_resnet', '--checkpoint', str(weights), '--num-classes', '3',
              '--data-dir', str(toy_data), '--split', 'val'])
    broken = tmp_path / 'broken.pth.tar'
    broken.write_bytes((trained_run / 'last.pth.tar').read_bytes()[:1000])
    with pytest.raises(SystemExit, match='cannot be read'):
        main(['validate', '--checkpoint', str(broken), '--data-dir', str(toy_data), '--split', 'val'])
