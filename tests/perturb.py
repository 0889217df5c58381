"""Weights away from their initial values, for tests that initialisation would make vacuous.

At initialisation several branches are nearly silent (layer scales of 1e-6, GRN and some BatchNorm weights
at 0, zero attention biases, identity BatchNorm statistics): fusing them, exporting them or running them in
low precision would be checked on values that hardly matter.
"""
import torch
import torch.nn as nn


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial statistics and affine terms for every BatchNorm2d, so that fusing them is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model


def non_trivial(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values for every 1-D (or GRN-shaped) parameter and attention-bias table, and for the BatchNorm
    statistics: biases ~ N(0, 0.1), scales ~ U(0.5, 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(('bias', 'attention_biases')):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif p.dim() == 1 or p.shape[:-1] == (1, 1, 1):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model
