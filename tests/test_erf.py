"""Effective receptive field: the map, the high-contribution area ratios and `lkconv erf`."""
import csv

import pytest
import torch
import torch.nn as nn

from lkconv.cli import main
from lkconv.bench.erf import area_ratio, area_ratios, erf_map


def conv_stack(kernel_size: int, depth: int = 1) -> nn.Module:
    layers = [nn.Conv2d(1, 1, kernel_size, padding=kernel_size // 2, bias=False) for _ in range(depth)]
    for layer in layers:
        nn.init.constant_(layer.weight, 1.0)
    return nn.Sequential(*layers)


def images(n=4, size=33):
    return [torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(0))]


def test_erf_of_one_conv_is_its_kernel_window():
    erf = erf_map(conv_stack(3), images())
    assert erf.shape == (33, 33)
    support = (erf > 0).nonzero()
    assert support.min(0).values.tolist() == [15, 15] and support.max(0).values.tolist() == [17, 17]
    assert torch.allclose(erf[15:18, 15:18], torch.ones(3, 3, dtype=erf.dtype))  # |d sum / d x| = 1 per tap
    assert area_ratio(erf, 0.99) == pytest.approx(9 / 33 ** 2)
    assert area_ratio(erf, 1.0) == pytest.approx(9 / 33 ** 2)


def test_larger_kernel_spreads_the_contribution():
    small = area_ratios(erf_map(conv_stack(3, depth=2), images()))
    large = area_ratios(erf_map(conv_stack(13, depth=2), images()))
    for t in small:
        assert large[t] > small[t]


def test_area_ratio_is_the_smallest_centred_square():
    erf = torch.ones(9, 9, dtype=torch.float64)
    # squares of side 1, 3, 5, 7, 9 hold 1, 9, 25, 49, 81 of 81: the first to reach half is side 7
    assert area_ratio(erf, 0.5) == pytest.approx(49 / 81)
    assert area_ratio(erf, 25 / 81) == pytest.approx(25 / 81)
    with pytest.raises(ValueError):
        area_ratio(erf, 0)


def test_erf_needs_a_spatial_feature_map():
    tokens = nn.Sequential(nn.Conv2d(1, 4, 4, stride=4), nn.Flatten(2))  # (B, C, N): not a map
    with pytest.raises(ValueError, match='spatial feature map'):
        erf_map(tokens, images())


def test_erf_command_on_an_image_folder(tmp_path, capsys):
    from PIL import Image
    folder = tmp_path / 'images' / 'class_a'
    folder.mkdir(parents=True)
    for i in range(3):
        pixels = torch.randint(0, 256, (48, 40, 3), generator=torch.Generator().manual_seed(i), dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / f'{i}.png')
    out = tmp_path / 'erf'
    assert main(['erf', 'unireplknet_a', '--img-size', '64', '--num-images', '2', '--data-dir',
                 str(tmp_path / 'images'), '--out', str(out)]) == 0
    stdout = capsys.readouterr().out
    assert 'unireplknet_a' in stdout and 't=99%' in stdout and 'randomly initialised' in stdout
    assert (out / 'erf_unireplknet_a.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    with open(out / 'erf.csv') as f:
        row, = csv.DictReader(f)
    ratios = [float(row[f'area_ratio_{t}']) for t in (20, 30, 50, 99)]
    assert ratios == sorted(ratios) and 0 < ratios[0] and ratios[-1] <= 1
    assert row['weights'] == 'random init' and row['img_size'] == '64' and row['images'].startswith('2 images from')


def test_erf_command_rejects_token_models(tmp_path):
    with pytest.raises(SystemExit, match='spatial feature map'):
        main(['erf', 'vit_tiny_patch16_224', '--num-images', '1', '--out', str(tmp_path)])


def test_erf_command_on_the_largest_kernels(tmp_path, capsys):
    """RepLKNet's 31x31 and SLaK's 51x5 / 5x51 kernels through `lkconv erf`, side by side."""
    out = tmp_path / 'erf'
    assert main(['erf', 'replknet_31b', 'slak_tiny', '--img-size', '64', '--num-images', '1', '-b', '1',
                 '--out', str(out)]) == 0
    with open(out / 'erf.csv') as f:
        rows = list(csv.DictReader(f))
    assert [row['model'] for row in rows] == ['replknet_31b', 'slak_tiny']
    for row in rows:
        ratios = [float(row[f'area_ratio_{t}']) for t in (20, 30, 50, 99)]
        assert ratios == sorted(ratios) and 0 < ratios[0]
        assert (out / f"erf_{row['model']}.png").read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
