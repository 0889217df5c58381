"""lkconv: large-kernel ConvNet backbones for timm.

Importing the package registers every model with timm's registry, so that
``timm.create_model('unireplknet_t', pretrained=True)`` works after ``import lkconv``.
"""
from .version import __version__
from . import layers, models
from .models import list_models

__all__ = ['__version__', 'layers', 'models', 'list_models']
