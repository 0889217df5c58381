"""The parity fixtures (official outputs on official weights, in ../shared/fixtures/parity): load one, build
a model from its official-layout checkpoint the way a user does, and compare outputs."""
from pathlib import Path
from typing import Dict

import timm
import torch

from lkconv.utils import relative_error


def load_fixture(path: Path) -> Dict:
    """A parity fixture with its float16 state_dict cast to float32 (the outputs were computed that way)."""
    data = torch.load(path, weights_only=True)
    data['state_dict'] = {k: v.float() if v.is_floating_point() else v for k, v in data['state_dict'].items()}
    return data


def create_from_official(model_name: str, state_dict: Dict[str, torch.Tensor], tmp_path: Path, **kwargs):
    """Build `model_name` from an official-layout checkpoint file, the way a user loads one offline."""
    file = tmp_path / f'{model_name}_official.pth'
    torch.save(state_dict, file)
    return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(file)), **kwargs)


def rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| relative to max |ref| (lkconv.utils.relative_error); different shapes are an error."""
    return relative_error(ours, ref)
