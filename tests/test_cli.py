"""The `lkconv` command line: zoo listing, model facts, errors for unknown names, and the demo."""
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


def test_unknown_model_suggests_close_names():
    with pytest.raises(SystemExit, match="unknown model 'unireplknet_tt'.*unireplknet_t"):
        main(['info', 'unireplknet_tt'])


def test_demo(capsys):
    main(['demo', '--batch-size', '1'])
    out = capsys.readouterr().out
    assert 'unireplknet_a: 4,649,060 parameters' in out
    assert 'GMACs' in out and 're-parameterised: 4,437,300 parameters' in out
