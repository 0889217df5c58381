"""Model families. Importing this package registers every lkconv model with timm."""
from . import unireplknet
from .unireplknet import UniRepLKNet
from .inceptionnext import InceptionNeXt
from .van import VAN
from .lsnet import LSNet
from .fdconv_nets import FDConvResNet
from .replknet import RepLKNet
from .slak import SLaK
from .layer_decay import (
    DOWNSTREAM_OPTIM_SETTINGS, DownstreamOptimSettings, downstream_optim_settings, layer_decay_param_groups,
)
