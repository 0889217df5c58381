"""Model families. Importing this package registers every lkconv model with timm."""
from typing import List

import timm

from . import unireplknet
from .unireplknet import UniRepLKNet
from .inceptionnext import InceptionNeXt
from .van import VAN
from .lsnet import LSNet
from .fdconv_nets import FDConvInceptionNeXt, FDConvResNet, FDConvUniRepLKNet

_FAMILY_MODULES = ('unireplknet', 'inceptionnext', 'van', 'lsnet', 'fdconv_nets')


def list_models(filter: str = '', pretrained: bool = False) -> List[str]:
    """Names of the models lkconv registers with timm (optionally filtered by a wildcard)."""
    names = []
    for module in _FAMILY_MODULES:
        names += timm.list_models(filter or '*', module=module, pretrained=pretrained)
    return names
