"""The `lkconv` command line: zoo listing, model facts, errors for unknown names, the demo, help texts and start-up."""
import subprocess
import sys

import pytest

from lkconv.cli import main


def test_list(capsys):
    main(['list', 'unireplknet_*'])
    names = capsys.readouterr().out.split()
    assert 'unireplknet_a' in names and 'unireplknet_xl' in names
    assert all(n.startswith('unireplknet_') for n in names)


def test_info(capsys):
    main(['info', 'unireplknet_t'])
    out = capsys.readouterr().out
    assert '31,693,420' in out and 'stages.3 (640ch, /32)' in out and 'unireplknet_t.in1k' in out
    # the authors' detection / segmentation checkpoints of the backbone, and the arguments they need
    assert 'downstream:  backbone arguments feature_norms=True' in out
    assert 'upernet ade20k (in1k): mIoU 48.6 / 49.1' in out
    assert 'casc_mask_rcnn_unireplknet_t_in1k_3x_coco_ap51.75.pth' in out
    main(['info', 'inceptionnext_atto'])
    assert 'downstream' not in capsys.readouterr().out


def test_unknown_model_suggests_close_names():
    with pytest.raises(SystemExit, match="unknown model 'unireplknet_tt'.*unireplknet_t"):
        main(['info', 'unireplknet_tt'])


def test_demo(capsys):
    main(['demo', '--batch-size', '1'])
    out = capsys.readouterr().out
    assert 'unireplknet_a: 4,649,060 parameters' in out
    assert 'GMACs' in out and 're-parameterised: 4,437,300 parameters' in out


def test_list_takes_what_bench_takes(capsys):
    import lkconv
    main(['list'])
    assert capsys.readouterr().out.split() == lkconv.list_models()  # the zoo
    main(['list', 'van_b[01]', 'unireplknet', 'resnet18', 'van_b0'])  # wildcard, family, timm name; once each
    names = capsys.readouterr().out.split()
    assert names[:2] == ['van_b0', 'van_b1'] and names[-1] == 'resnet18' and len(names) == len(set(names))
    assert set(names[2:-1]) == {n for n in lkconv.list_models() if n.startswith('unireplknet_')}
    main(['list', 'van_b0', 'unireplknet_a', '--pretrained'])
    assert capsys.readouterr().out.split() == ['van_b0.in1k', 'unireplknet_a.in1k']
    with pytest.raises(SystemExit, match=r"^lkconv list: no model matches 'zzzz'$"):
        main(['list', 'zzzz'])


def test_help_shows_defaults_and_explains_every_option(capsys):
    from lkconv.cli import build_parser
    commands = next(a for a in build_parser()._actions if a.dest == 'command').choices
    for name in ('list', 'info', 'demo', 'bench', 'erf', 'reparam', 'export'):
        undocumented = [a.dest for a in commands[name]._actions if not a.help]
        assert not undocumented, (name, undocumented)
    with pytest.raises(SystemExit):
        main(['bench', '--help'])
    text = ' '.join(capsys.readouterr().out.split())
    assert 'timed steps per model, workload and round (default: 10)' in text
    assert 'default: 256 on CUDA, 16 on CPU' in text and '(default: None)' not in text
    assert '(default: False)' not in text


def test_command_line_starts_without_torch():
    """Building the parser (`lkconv --help`, a mistyped option) imports neither torch nor timm; `import lkconv`
    still registers the models with timm, whichever is imported first."""
    code = ('import sys, lkconv.cli\n'
            'lkconv.cli.build_parser()\n'
            'assert not {"torch", "timm"} & set(sys.modules), sorted({"torch", "timm"} & set(sys.modules))\n'
            'import timm\n'
            'assert timm.create_model("unireplknet_t", device="meta").num_classes == 1000\n'
            'import lkconv.layers\n'
            'print(lkconv.list_models()[0], lkconv.layers.__name__)\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stderr == '', result.stderr
    assert result.stdout.split() == ['unireplknet_a', 'lkconv.layers']
    code = 'import lkconv.layers, timm; print(timm.is_model("van_b0"))'  # timm first imported inside lkconv
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout == 'True\n', result.stderr


def test_runs_as_a_module():
    """`python -m lkconv.cli` is the `lkconv` command, which is what `torchrun -m lkconv.cli train ...` runs."""
    result = subprocess.run([sys.executable, '-m', 'lkconv.cli', 'list', 'van_b[01]'], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.split() == ['van_b0', 'van_b1'], result.stderr
