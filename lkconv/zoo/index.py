"""The zoo's families, model names and published weights, read from the model files without running them.

Running a model file means importing torch and timm, about five seconds before `lkconv list` could print a
name. The names are all in the files' text anyway: each model is a function decorated with
`@register_model`, and each published weight is a key of the `generate_default_cfgs({...})` literal, in
timm's `model.tag` form. Reading them with `ast` takes milliseconds and cannot drift from what timm
registers when the files run; `tests/test_zoo.py` holds the two equal.
"""
import ast
import fnmatch
import re
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Tuple

__all__ = ['FAMILIES', 'family_models', 'pretrained_names', 'list_models']

# the model files, one family each, in the order the zoo is listed
FAMILIES = ('unireplknet', 'inceptionnext', 'van', 'lsnet', 'fdconv_nets', 'replknet', 'slak')

_MODELS_DIR = Path(__file__).parents[1] / 'models'


def _natural_key(name: str) -> List:
    """timm's listing order: digit runs compare as numbers ('van_b2' before 'van_b10')."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name.lower())]


def _read_family(family: str) -> Tuple[List[str], List[str]]:
    """The model names registered by one model file and its pretrained cfg keys (`model.tag`)."""
    tree = ast.parse((_MODELS_DIR / f'{family}.py').read_text(encoding='utf-8'))
    models, tagged = [], []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Name) and d.id == 'register_model' for d in node.decorator_list):
            models.append(node.name)
        elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
              and getattr(node.value.func, 'id', None) == 'generate_default_cfgs'):
            tagged += [ast.literal_eval(key) for key in node.value.args[0].keys]
    return models, tagged


@lru_cache(maxsize=None)
def _index() -> Tuple[Dict[str, Tuple[str, ...]], Dict[str, Tuple[str, ...]]]:
    families, weights = {}, {}
    for family in FAMILIES:
        models, tagged = _read_family(family)
        families[family] = tuple(sorted(models, key=_natural_key))
        for name in sorted(tagged, key=_natural_key):
            model = name.partition('.')[0]
            weights[model] = weights.get(model, ()) + (name,)
    return families, weights


def family_models(family: str) -> Tuple[str, ...]:
    """The model names of one family (a name in `FAMILIES`), in timm's order."""
    return _index()[0][family]


def pretrained_names(model: str) -> Tuple[str, ...]:
    """A zoo model's published weights as tagged names (`unireplknet_t.in1k`), in timm's order."""
    return _index()[1].get(model, ())


def list_models(filter: str = '', pretrained: bool = False) -> List[str]:
    """The zoo's model names, family by family, optionally filtered by a wildcard; with `pretrained`,
    the tagged names of its published weights instead, as `timm.list_models(pretrained=True)` gives them."""
    names = [name for family in FAMILIES for name in family_models(family)]
    if pretrained:
        names = [tagged for name in names for tagged in pretrained_names(name)]
        # as timm does, a filter without a tag also matches every tag of the models it names
        return [n for n in names if not filter or fnmatch.fnmatch(n, filter)
                or ('.' not in filter and fnmatch.fnmatch(n, filter + '.*'))]
    return fnmatch.filter(names, filter) if filter else names
