"""Deployment: deploy-form checkpoints (`lkconv reparam`) and ONNX export checked with onnxruntime (`lkconv export`)."""
import re

import pytest
import timm
import torch
from timm.utils import reparameterize_model

from lkconv.cli import main
from lkconv.zoo.deploy_checkpoint import is_deploy_checkpoint, load_deploy_model, save_deploy_checkpoint
from lkconv.deploy.onnx_export import export_onnx, relative_error, run_onnx
from lkconv.training.checkpoint import CheckpointError
from lkconv.training.validate import ValidateOptions, load_eval_model
from helpers import DEPLOY_PARAM_COUNTS, PARAM_COUNTS, SMALLEST_PER_FAMILY, non_trivial

ONNX_TOLERANCE = 1e-4  # relative error, max |onnxruntime - PyTorch| / max |PyTorch|


def trained_like(name):
    """A model whose norms, biases, layer scales and BatchNorm statistics are far from their initial values,
    as after training: re-parameterisation and export then have real work to do."""
    torch.manual_seed(0)
    return non_trivial(timm.create_model(name).eval())


def test_relative_error_is_relative_to_the_output_scale():
    expected = torch.tensor([100.0, -200.0])
    assert relative_error(torch.tensor([100.0, -199.98]), expected) == pytest.approx(1e-4, rel=1e-3)  # float32
    assert relative_error(expected, expected) == 0


@pytest.mark.parametrize('name', SMALLEST_PER_FAMILY)
def test_deploy_checkpoint_round_trip_and_onnx_parity(name, tmp_path):
    model = trained_like(name)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    deployed = reparameterize_model(model)
    path = save_deploy_checkpoint(deployed, name, dict(input_size=(3, 224, 224)), tmp_path / 'deploy.pth')

    checkpoint = torch.load(path, weights_only=True)
    assert is_deploy_checkpoint(checkpoint) and checkpoint['arch'] == name
    loaded, data_config, loaded_name = load_deploy_model(checkpoint)
    assert loaded_name == name and data_config['input_size'] == (3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())

    onnx_path = export_onnx(loaded, x[:1], tmp_path / f'{name}.onnx')  # traced at batch 1, run at batch 2
    error = relative_error(run_onnx(onnx_path, x), expected)
    print(f'ONNX relative error {name}: {error:.2e}')  # visible with -s; the figures of docs/deployment.md
    assert error <= ONNX_TOLERANCE


def test_deploy_checkpoint_of_the_wrong_model_is_refused(tmp_path):
    deployed = reparameterize_model(trained_like('unireplknet_a'))
    path = save_deploy_checkpoint(deployed, 'unireplknet_a', dict(input_size=(3, 224, 224)), tmp_path / 'd.pth')
    checkpoint = torch.load(path, weights_only=True)
    checkpoint['arch'] = 'unireplknet_f'
    with pytest.raises(CheckpointError, match='does not fit the deploy form of unireplknet_f'):
        load_deploy_model(checkpoint)
    with pytest.raises(CheckpointError, match='is of unireplknet_a, not van_b0'):
        load_eval_model(ValidateOptions(model='van_b0', checkpoint=str(path)))


def test_reparam_and_export_commands(tmp_path, capsys):
    """Training weights -> `lkconv reparam` -> `lkconv export` -> onnxruntime, through the command line."""
    model = trained_like('unireplknet_a')
    weights = tmp_path / 'unireplknet_a_trained.pth'
    torch.save(model.state_dict(), weights)
    deploy = tmp_path / 'unireplknet_a_deploy.pth'
    assert main(['reparam', 'unireplknet_a', '--checkpoint', str(weights), '--out', str(deploy)]) == 0
    out = capsys.readouterr().out
    before, after = (int(n.replace(',', '')) for n in re.search(r'([\d,]+) -> ([\d,]+) parameters', out).groups())
    assert (before, after) == (PARAM_COUNTS['unireplknet_a'], DEPLOY_PARAM_COUNTS['unireplknet_a'])
    assert float(re.search(r'max relative error (\S+)', out).group(1)) <= 1e-4

    # a deploy checkpoint is recognised by `validate`'s loader and is not re-parameterised twice
    loaded, _, name = load_eval_model(ValidateOptions(checkpoint=str(deploy), reparam=True))
    assert name == 'unireplknet_a'
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(loaded(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())

    onnx_path = tmp_path / 'unireplknet_a.onnx'
    assert main(['export', '--checkpoint', str(deploy), '--out', str(onnx_path), '--img-size', '160']) == 0
    out = capsys.readouterr().out
    assert 'dynamic batch' in out and '(2, 3, 160, 160)' in out and '(ok)' in out
    assert float(re.search(r'max relative error (\S+)', out).group(1)) <= ONNX_TOLERANCE
    assert run_onnx(onnx_path, torch.randn(4, 3, 160, 160)).shape == (4, 1000)


def test_export_without_weights_says_so(tmp_path, capsys):
    assert main(['export', 'van_b0', '--out', str(tmp_path / 'v.onnx'), '--img-size', '64', '--static-batch',
                 '-b', '2', '--no-check']) == 0
    captured = capsys.readouterr()
    assert 'randomly initialised' in captured.err and '(2, 3, 64, 64)' in captured.out
    with pytest.raises(SystemExit, match="unknown model 'van_b9'"):
        main(['export', 'van_b9', '--out', str(tmp_path / 'x.onnx')])
