"""Helpers for the parity tests: load an official-behaviour fixture and push it through the user's path."""
from pathlib import Path
from typing import Dict

import timm
import torch


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
    """max |ours - ref| relative to the scale of ref."""
    assert ours.shape == ref.shape, f'shape {tuple(ours.shape)} != {tuple(ref.shape)}'
    return ((ours.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
