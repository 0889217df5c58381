"""Model names as users type them: exact names (with or without a pretrained tag), wildcards, families
and 'all', resolved against timm's registry, with close matches for a name that is not there.

Every command that takes a model name goes through here, so a misspelling gets the same answer everywhere.
Names within the lkconv zoo are answered from `lkconv.zoo.index`, without importing timm (seconds), so that
`lkconv list` is quick; timm is imported for the first name that leaves the zoo.
"""
import fnmatch
from dataclasses import dataclass
from typing import List, Sequence

from ..utils import did_you_mean
from . import index

__all__ = ['check_model_name', 'ModelSpec', 'resolve_models', 'pretrained_names']


def _is_known(name: str) -> bool:
    """A registered model, and if `name` has a pretrained tag, one of that model's tags."""
    import timm
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
    import timm
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


def _in_zoo(pattern: str) -> List[str]:
    """What `pattern` names within the lkconv zoo, or [] if it names nothing there."""
    models = index.list_models()
    if pattern == 'all':
        return models
    if any(c in pattern for c in '*?['):
        return fnmatch.filter(models, pattern)
    if pattern in models or pattern in index.pretrained_names(pattern.partition('.')[0]):
        return [pattern]
    return list(index.family_models(pattern)) if pattern in index.FAMILIES else []


def _in_timm(pattern: str) -> List[str]:
    """What `pattern` names in timm's whole registry (lkconv's models included), or []."""
    import timm
    if any(c in pattern for c in '*?['):
        return timm.list_models(pattern, include_tags='.' in pattern)
    return [pattern] if _is_known(pattern) else timm.list_models(module=pattern)


def resolve_models(patterns: Sequence[str]) -> List[ModelSpec]:
    """Model specs for names, wildcards, families and 'all', in order, without duplicates.

    A pattern is `all` (the whole lkconv zoo), a wildcard (matched against the lkconv zoo first, then
    against timm), an exact timm name (lkconv or timm, tag allowed), or a family (a timm model module
    such as `unireplknet` or `convnext`). Raises ValueError naming close matches otherwise.
    """
    names: List[str] = []
    for pattern in patterns:
        found = _in_zoo(pattern) or _in_timm(pattern)
        if not found:
            import timm
            hint = did_you_mean(pattern, _candidates(pattern) + sorted(timm.list_modules()))
            raise ValueError(f"no model matches '{pattern}'{hint}")
        names += [n for n in found if n not in names]
    zoo_models = set(index.list_models())
    return [ModelSpec(n, 'lkconv' if n.split('.')[0] in zoo_models else 'timm') for n in names]


def pretrained_names(names: Sequence[str]) -> List[str]:
    """The published weights of `names` as tagged names: every tag of an untagged name, a tagged name
    itself if it has weights. The zoo's are read without importing timm."""
    zoo_models = set(index.list_models())

    def weights(model: str) -> Sequence[str]:
        if model in zoo_models:
            return index.pretrained_names(model)
        import timm
        return timm.list_pretrained(f'{model}.*')

    return [t for name in names for t in weights(name.partition('.')[0]) if '.' not in name or t == name]
