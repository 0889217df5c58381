"""The zoo index (`lkconv.zoo.index`), read from the model files' text, equals what timm registers when they run."""
import subprocess
import sys

import pytest
import timm

import lkconv
from lkconv import zoo


def test_every_family_lists_what_it_registers():
    for family in zoo.FAMILIES:
        assert list(zoo.family_models(family)) == timm.list_models(module=family), family
    registered = [n for f in zoo.FAMILIES for n in timm.list_models(module=f)]
    assert zoo.list_models() == lkconv.list_models() == registered and registered


@pytest.mark.parametrize('filter', ['', 'van*', '*_t', 'unireplknet_t', 'van_b4.in22k', 'lsnet_*.in1k', 'nope'])
def test_listing_and_weights_match_timm(filter):
    for pretrained in (False, True):
        expected = [n for f in zoo.FAMILIES for n in timm.list_models(filter, module=f, pretrained=pretrained)]
        assert zoo.list_models(filter, pretrained) == expected, (filter, pretrained)


def test_weights_of_each_model_match_timm():
    for name in zoo.list_models():
        assert list(zoo.pretrained_names(name)) == timm.list_pretrained(f'{name}.*'), name
    assert zoo.pretrained_names('resnet50') == ()  # not a zoo model


@pytest.mark.parametrize('argv', [
    ['list'], ['list', 'all', 'lsnet'], ['list', 'van_b[01]', 'unireplknet_t.in1k'], ['list', '--pretrained']])
def test_listing_the_zoo_imports_neither_torch_nor_timm(argv, capsys):
    """`lkconv list` within the zoo answers from the index: the seconds torch and timm take to import are
    what kept it from answering at once. It prints what it prints here, where timm is loaded."""
    code = ('import sys, lkconv.cli\n'
            f'lkconv.cli.main({argv!r})\n'
            'assert not {"torch", "timm"} & set(sys.modules), sorted({"torch", "timm"} & set(sys.modules))\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == '', result.stderr
    from lkconv.cli import main
    main(argv)
    assert result.stdout == capsys.readouterr().out and result.stdout.strip()
