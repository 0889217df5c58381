"""The package's layering: each part imports only from the parts below it, never sideways or upwards.

    base (version, utils, cli_args, backends) < kernels < layers < models < zoo
        < training | bench | deploy | detection | segmentation (peers: none imports another) < cli

Every import statement counts, those inside functions too. The package root (`lkconv/__init__.py`)
assembles the rest (it registers the models with timm once timm is loaded), as `cli` does.
"""
import ast
from pathlib import Path
from typing import Iterator, Optional, Tuple

import lkconv

PACKAGE = Path(lkconv.__file__).parent

# (rank, part): a module may import its own part and any part of lower rank; equal ranks are peers
PARTS = {
    'lkconv.version': (0, 'base'), 'lkconv.utils': (0, 'base'), 'lkconv.cli_args': (0, 'base'),
    'lkconv.backends': (0, 'base'),
    'lkconv.kernels': (1, 'kernels'),
    'lkconv.layers': (2, 'layers'),
    'lkconv.models': (3, 'models'),
    'lkconv.zoo': (4, 'zoo'),
    'lkconv.training': (5, 'training'), 'lkconv.bench': (5, 'bench'), 'lkconv.deploy': (5, 'deploy'),
    'lkconv.detection': (5, 'detection'), 'lkconv.segmentation': (5, 'segmentation'),
    'lkconv.cli': (6, 'cli'), 'lkconv': (6, 'root'),
}


def part_of(module: str) -> Tuple[int, str]:
    while module not in PARTS:
        module = module.rpartition('.')[0]
    return PARTS[module]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> Optional[str]:
    if not node.level:
        return node.module
    base = module.split('.') if is_package else module.split('.')[:-1]
    base = base[:len(base) - (node.level - 1)]
    return '.'.join(base + ([node.module] if node.module else []))


def imports_in(text: str, module: str, is_package: bool = False) -> Iterator[Tuple[int, str]]:
    """(line, module) for every import of an lkconv module in the source `text` of `module`; `from X
    import y` counts as an import of X.y where that is a module, else of X."""
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, module, is_package)
            targets = [f'{source}.{alias.name}' if _is_module(f'{source}.{alias.name}') else source
                       for alias in node.names]
        else:
            continue
        yield from ((node.lineno, t) for t in targets if t == 'lkconv' or t.startswith('lkconv.'))


def lkconv_imports(path: Path) -> Iterator[Tuple[int, str]]:
    return imports_in(path.read_text(encoding='utf-8'), module_name(path), path.name == '__init__.py')


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split('.'))
    return path.with_suffix('.py').is_file() or (path / '__init__.py').is_file()


def test_no_import_runs_sideways_or_upwards():
    wrong = []
    for path in sorted(PACKAGE.rglob('*.py')):
        module = module_name(path)
        rank, part = part_of(module)
        for line, target in lkconv_imports(path):
            target_rank, target_part = part_of(target)
            if target_part != part and target_rank >= rank:
                wrong.append(f'{path.relative_to(PACKAGE.parent)}:{line}: {part} imports {target} ({target_part})')
    assert not wrong, '\n'.join(wrong)


def test_every_module_has_a_part():
    """A new top-level module or package must be placed in the layering, not fall into the root."""
    unplaced = [module_name(p) for p in sorted(PACKAGE.rglob('*.py'))
                if module_name(p) != 'lkconv' and part_of(module_name(p))[1] == 'root']
    assert not unplaced, unplaced


def test_the_check_sees_what_it_must_refuse():
    """Relative imports, imports inside functions and `from package import module` are all resolved, and an
    upward one is refused."""
    text = 'import torch\n\ndef f():\n    from ..models import unireplknet\n    from .. import zoo\n    from .reparam import x\n'
    found = list(imports_in(text, 'lkconv.layers.probe'))
    assert found == [(4, 'lkconv.models.unireplknet'), (5, 'lkconv.zoo'), (6, 'lkconv.layers.reparam')]
    ranks = [part_of(target)[0] for _, target in found]
    assert ranks == [3, 4, 2] and part_of('lkconv.layers.probe') == (2, 'layers')
