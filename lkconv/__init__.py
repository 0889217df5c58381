"""lkconv: large-kernel ConvNet backbones for timm.

Importing the package registers every model with timm's registry, so that
``timm.create_model('unireplknet_t', pretrained=True)`` works after ``import lkconv``.

Registering needs timm, and importing timm (with torch) takes seconds, which the command line must not
pay for `lkconv --help`. So the models register as soon as timm is loaded: at once if it already is,
otherwise right after the program imports it (and after any lkconv module being imported at that
moment is complete, since the model files import from them). `lkconv.layers`, `lkconv.models` and
`lkconv.list_models` are imported on first use.
"""
import importlib
import importlib.abc
import sys

from .version import __version__

__all__ = ['__version__', 'layers', 'models', 'list_models']


def _register_models() -> None:
    importlib.import_module('lkconv.models')  # its model files register themselves with timm
    importlib.import_module('lkconv.kernels')  # the Triton backends register themselves (no triton import)


class _RegisterOnceTimmIsLoaded(importlib.abc.MetaPathFinder):
    """Finds no module itself: wraps the loaders of `timm` and of lkconv's modules to learn when timm is
    loaded and no lkconv module is half-imported, registers the models then, and removes itself."""

    def __init__(self):
        self.timm_loaded = False
        self.lkconv_importing = 0  # lkconv modules being executed right now

    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'timm' and not fullname.startswith('lkconv.'):
            return None
        for finder in sys.meta_path:
            find_spec = getattr(finder, 'find_spec', None) if finder is not self else None
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, 'exec_module'):
                    spec.loader.exec_module = self._wrap(spec.loader.exec_module, fullname == 'timm')
                return spec
        return None

    def _wrap(self, exec_module, is_timm: bool):
        def exec_then_register(module):
            self.lkconv_importing += not is_timm
            try:
                exec_module(module)
            finally:
                self.lkconv_importing -= not is_timm
            self.timm_loaded |= is_timm
            if self.timm_loaded and not self.lkconv_importing and self in sys.meta_path:
                sys.meta_path.remove(self)
                _register_models()
        return exec_then_register


if 'timm' in sys.modules:
    _register_models()
else:
    sys.meta_path.insert(0, _RegisterOnceTimmIsLoaded())


def __getattr__(name: str):
    if name in ('layers', 'models'):
        return importlib.import_module(f'lkconv.{name}')
    if name == 'list_models':  # read from the model files' text, without importing timm
        return importlib.import_module('lkconv.zoo.index').list_models
    raise AttributeError(f"module 'lkconv' has no attribute {name!r}")
