"""Model names as users type them: exact names (with or without a pretrained tag), wildcards, families
and 'all', resolved against timm's registry, with close matches for a name that is not there.

Every command that takes a model name goes through here, so a misspelling gets the same answer everywhere.
"""
import difflib
import fnmatch
from dataclasses import dataclass
from typing import Iterable, List, Sequence

import timm

from .models import list_models

__all__ = ['did_you_mean', 'check_model_name', 'ModelSpec', 'resolve_models']


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """'; did you mean: a, b' with up to five distinct close matches of `name` among `choices`, or ''."""
    unique = list(dict.fromkeys(choices))  # the zoo's names are also timm's: list each once
    close = difflib.get_close_matches(name, unique, n=5, cutoff=0.5)
    return f"; did you mean: {', '.join(close)}" if close else ''


def _is_known(name: str) -> bool:
    """A registered model, and if `name` has a pretrained tag, one of that model's tags."""
    base, _, tag = name.partition('.')
    if not timm.is_model(base):
        return False
    if tag:
        try:
            timm.models.get_pretrained_cfg(name)
        except RuntimeError:  # timm: 'Invalid pretrained tag'
            return False
    return True


def _candidates(name: str) -> List[str]:
    """What an unknown `name` is compared with: its model's tagged names if the model exists, else every model."""
    base = name.partition('.')[0]
    return timm.list_models(base, include_tags=True) if timm.is_model(base) else timm.list_models()


def check_model_name(name: str) -> str:
    """`name` if timm knows it (with or without a valid pretrained tag); else ValueError with close matches."""
    if _is_known(name):
        return name
    raise ValueError(f"unknown model '{name}'{did_you_mean(name, _candidates(name))}")


@dataclass(frozen=True)
class ModelSpec:
    name: str  # a timm name, optionally with a pretrained tag
    source: str  # 'lkconv' or 'timm'


def resolve_models(patterns: Sequence[str]) -> List[ModelSpec]:
    """Model specs for names, wildcards, families and 'all', in order, without duplicates.

    A pattern is `all` (the whole lkconv zoo), a wildcard (matched against the lkconv zoo first, then
    against timm), an exact timm name (lkconv or timm, tag allowed), or a family (a timm model module
    such as `unireplknet` or `convnext`). Raises ValueError naming close matches otherwise.
    """
    zoo = list_models()
    names: List[str] = []
    for pattern in patterns:
        if pattern == 'all':
            found = zoo
        elif any(c in pattern for c in '*?['):
            found = fnmatch.filter(zoo, pattern) or timm.list_models(pattern, include_tags='.' in pattern)
        elif _is_known(pattern):
            found = [pattern]
        else:
            found = timm.list_models(module=pattern)
        if not found:
            hint = did_you_mean(pattern, _candidates(pattern) + sorted(timm.list_modules()))
            raise ValueError(f"no model matches '{pattern}'{hint}")
        names += [n for n in found if n not in names]
    return [ModelSpec(n, 'lkconv' if n.split('.')[0] in zoo else 'timm') for n in names]
