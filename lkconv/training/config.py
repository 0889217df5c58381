"""Training configs: a YAML file (sections model, data, optim, sched, train, sparse, output), composed from base
files, overridden from the command line, and validated before any work starts.

A file may name the files it builds on with a top-level `base:` (a path or a list of paths, relative to
the file); their sections are merged key by key, later files winning. Command-line overrides are
`section.key=value` strings, the value written as in YAML (`optim.lr=1e-3`, `data.scale=[0.5,1.0]`,
`train.amp=true`, `model.num_classes=null`).

Every key is checked against the schema below: an unknown key, a value of the wrong type or a missing
data directory is reported as `FILE:LINE: section.key: problem`, with the closest valid key for a
misspelling. All problems found are reported together in one `ConfigError`. Checks made later, against the
built model or the data (`config_problem`), name the same file and line.

Importing this module does not import torch or timm (the command line reads the key names from it).
"""
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union, get_args, get_origin, get_type_hints

import yaml

from ..utils import close_matches

__all__ = [
    'Config', 'ConfigError', 'DataConfig', 'ModelConfig', 'OptimConfig', 'OutputConfig', 'SchedConfig',
    'SparseConfig', 'TrainConfig', 'EMBEDDED_DATASETS', 'config_keys', 'config_problem', 'config_to_dict',
    'dump_config', 'load_config', 'parse_config',
]

# datasets lkconv writes out itself (see lkconv.training.data); every other name goes to timm's create_dataset
EMBEDDED_DATASETS = ('lkconv/digits',)


@dataclass
class ModelConfig:
    name: str = ''  # required: a registered timm model name, optionally with a pretrained tag
    pretrained: bool = False
    pretrained_path: Optional[str] = None  # weights file loaded as the pretrained weights (implies pretrained)
    num_classes: Optional[int] = None  # None: the model's default
    in_chans: Optional[int] = None
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    head_init_scale: Optional[float] = None  # multiply the classifier's initial weights (fine-tuning recipes)
    grad_checkpointing: bool = False
    kwargs: Dict[str, Any] = field(default_factory=dict)  # further model constructor arguments


@dataclass
class DataConfig:
    dir: Optional[str] = None  # dataset root; for `lkconv/digits`, where it is written (default below)
    dataset: str = ''  # '' = image folder or tar; timm prefixes torch/, hfds/, hfids/, tfds/, wds/; lkconv/digits
    train_split: str = 'train'
    val_split: str = 'validation'  # '' disables evaluation
    class_map: str = ''
    img_size: Optional[int] = None  # None: the model's pretrained input size
    crop_pct: Optional[float] = None  # eval crop; None: the model's
    crop_mode: Optional[Literal['center', 'squash', 'border']] = None
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    interpolation: Optional[str] = None  # eval resize interpolation; None: the model's
    train_interpolation: str = 'random'
    batch_size: int = 128  # per process
    val_batch_size: Optional[int] = None  # None: batch_size
    workers: int = 4
    pin_memory: bool = True
    no_aug: bool = False
    scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: List[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: float = 0.4
    aa: Optional[str] = None  # e.g. rand-m9-mstd0.5-inc1
    reprob: float = 0.0
    remode: Literal['const', 'rand', 'pixel'] = 'pixel'
    recount: int = 1
    aug_repeats: int = 0  # repeated augmentation (distributed training)
    mixup: float = 0.0
    cutmix: float = 0.0
    cutmix_minmax: Optional[List[float]] = None
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: Literal['batch', 'pair', 'elem'] = 'batch'
    mixup_off_epoch: int = 0  # turn mixup off from this epoch on (0: never)


@dataclass
class OptimConfig:
    opt: str = 'adamw'
    lr: Optional[float] = None  # absolute learning rate; None: lr_base scaled to the global batch
    lr_base: float = 1e-3
    lr_base_size: int = 256  # the global batch lr_base belongs to
    lr_base_scale: Literal['linear', 'sqrt'] = 'linear'
    weight_decay: float = 0.05
    momentum: float = 0.9
    eps: Optional[float] = None
    betas: Optional[List[float]] = None
    layer_decay: Optional[float] = None  # layer-wise lr decay rate (lr scale per layer, counted from the head)
    # which layers: timm = the model's group_matcher groups; unireplknet = the official UniRepLKNet layer ids
    # (lkconv.models.layer_decay; the authors' ImageNet fine-tuning and detection/segmentation grouping)
    layer_decay_rule: Literal['timm', 'unireplknet'] = 'timm'
    layer_decay_num_layers: Optional[int] = None  # rule unireplknet: the official num_layers (null: 12)
    clip_grad: Optional[float] = None
    clip_mode: Literal['norm', 'value', 'agc'] = 'norm'


@dataclass
class SchedConfig:
    name: Literal['cosine', 'tanh', 'step', 'multistep', 'plateau', 'poly', 'constant', 'wsd', 'rsqrt', 'none'] = \
        'cosine'
    warmup_epochs: int = 5
    warmup_lr: float = 1e-6
    warmup_prefix: bool = False
    min_lr: float = 1e-5
    cooldown_epochs: int = 0  # epochs at min_lr added after the schedule
    decay_epochs: Optional[float] = None
    decay_milestones: List[int] = field(default_factory=lambda: [90, 180, 270])
    decay_rate: float = 0.1
    on_updates: bool = False  # step the schedule every optimizer update instead of every epoch


@dataclass
class TrainConfig:
    epochs: int = 300
    stop_epoch: Optional[int] = None  # end the run after this epoch (the schedule still spans `epochs`)
    seed: int = 42
    device: str = 'auto'  # auto: cuda if available, else cpu
    amp: bool = False
    amp_dtype: Literal['bfloat16', 'float16'] = 'bfloat16'
    channels_last: bool = False
    compile: Optional[str] = None  # torch.compile backend, e.g. inductor
    deterministic: bool = False  # deterministic algorithms, no cuDNN autotuning: repeatable on GPU, slower
    grad_accum_steps: int = 1
    smoothing: float = 0.1
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    model_ema_warmup: bool = False
    model_ema_eval: bool = True  # evaluate the EMA weights and record (and pick the best by) their metrics
    distill_type: Literal['none', 'hard', 'soft'] = 'none'
    distill_teacher: Optional[str] = None  # timm model name of the teacher
    distill_teacher_path: Optional[str] = None  # teacher weights file (else its pretrained weights)
    distill_alpha: float = 0.5
    distill_tau: float = 1.0
    sync_bn: bool = False
    dist_bn: Literal['reduce', 'broadcast', ''] = 'reduce'
    dist_backend: Optional[str] = None  # None: nccl on cuda, gloo on cpu
    val_interval: int = 1
    eval_metric: Literal['top1', 'top5', 'loss'] = 'top1'


@dataclass
class SparseConfig:
    """Dynamic sparse training as SLaK does it (lkconv.training.sparsity); the names are the official flags'."""
    enabled: bool = False  # --sparse
    sparsity: float = 0.4  # fraction of zeros over the masked tensors (density 1 - sparsity)
    init: Literal['snip', 'uniform', 'ERK', 'resume'] = 'snip'  # --sparse_init: the layer-wise densities
    prune: Literal['magnitude'] = 'magnitude'
    growth: Literal['random', 'gradient', 'momentum'] = 'random'
    prune_rate: float = 0.3  # fraction of a tensor's active weights replaced per update, at the start
    decay_schedule: Literal['cosine', 'linear'] = 'cosine'  # the prune rate's decay over the run
    update_frequency: int = 100  # -u: optimizer steps between topology updates
    fix: bool = False  # keep the initial masks (no topology updates)
    only_L: bool = False  # --only-L: mask only SLaK's two rectangular kernels (not the small one)


@dataclass
class OutputConfig:
    dir: str = 'output/train'
    experiment: Optional[str] = None  # run folder name under dir; None: <model>-<date>-<time>
    log_interval: int = 50


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sparse: SparseConfig = field(default_factory=SparseConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    # where each `section.key` was set, for `config_problem`; set by load_config / parse_config. A plain
    # attribute, not a field: it is neither compared nor written out.
    _sources = None


_SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Config)}
_BASE_KEY = 'base'
_COMMAND_LINE = 'command line'


class ConfigError(ValueError):
    """One or more problems in a config, one line each: `WHERE: section.key: problem`."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__('\n'.join(self.problems))


@dataclass(frozen=True)
class _Source:
    file: Optional[str]
    line: Optional[int]

    def __str__(self) -> str:
        if self.file is None:
            return _COMMAND_LINE
        return f'{self.file}:{self.line}' if self.line else self.file


def _section_types(section: str) -> Dict[str, Any]:
    return get_type_hints(type(_SECTIONS[section]()))


def config_keys() -> Dict[str, Any]:
    """Every `section.key` with its type."""
    return {f'{s}.{k}': t for s in _SECTIONS for k, t in _section_types(s).items()}


def config_problem(config: Config, key: str, problem: str) -> str:
    """A problem found after loading, in the form of the loader's own: `WHERE: section.key: problem`."""
    if config._sources is None:  # built in Python, not loaded
        return f'{key}: {problem}'
    sources, origin = config._sources
    return f'{sources.get(key, _Source(origin, None))}: {key}: {problem}'


def _closest(name: str, candidates: Sequence[str]) -> str:
    """The candidate most similar to `name` (there always is one)."""
    return (close_matches(name, candidates, n=1, cutoff=0.0) or [candidates[0]])[0]


# ---------------------------------------------------------------------------------------------- reading

def _yaml_problem(path: str, error: yaml.YAMLError) -> str:
    mark = getattr(error, 'problem_mark', None)
    where = f'{path}:{mark.line + 1}' if mark is not None else path
    return f'{where}: not valid YAML: {getattr(error, "problem", None) or error}'


def _read_file(path: Path, seen: Tuple[Path, ...] = ()) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, _Source],
                                                                 List[str]]:
    """Sections, the source of every `section.key`, and the problems found, for `path` and its bases."""
    path = Path(path)
    shown = str(path)
    if not path.is_file():
        return {}, {}, [f'{shown}: config file not found']
    resolved = path.resolve()
    if resolved in seen:
        return {}, {}, [f'{shown}: `base` files include each other in a cycle']
    loader = yaml.SafeLoader(path.read_text())
    try:
        root = loader.get_single_node()
        if root is None:
            return {}, {}, []
        if not isinstance(root, yaml.MappingNode):
            return {}, {}, [f'{shown}:{root.start_mark.line + 1}: a config must be a mapping of sections']
        sections: Dict[str, Dict[str, Any]] = {}
        sources: Dict[str, _Source] = {}
        problems: List[str] = []
        bases: List[str] = []
        for key_node, value_node in root.value:
            name = str(key_node.value)
            where = _Source(shown, key_node.start_mark.line + 1)
            if name == _BASE_KEY:
                value = loader.construct_object(value_node, deep=True)
                bases = [value] if isinstance(value, str) else value
                if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
                    problems.append(f'{where}: base: expected a file path or a list of file paths')
                    bases = []
                continue
            if name not in _SECTIONS:
                problems.append(f"{where}: {name}: unknown section; did you mean '{_closest(name, list(_SECTIONS))}'?"
                                f' (sections: {", ".join(_SECTIONS)})')
                continue
            if not isinstance(value_node, yaml.MappingNode):
                if isinstance(value_node, yaml.ScalarNode) and value_node.value in ('', '~', 'null'):
                    continue  # an empty section
                problems.append(f'{where}: {name}: expected a mapping of keys')
                continue
            section = sections.setdefault(name, {})
            for sub_key, sub_value in value_node.value:
                key = f'{name}.{sub_key.value}'
                section[str(sub_key.value)] = loader.construct_object(sub_value, deep=True)
                sources[key] = _Source(shown, sub_key.start_mark.line + 1)
    except yaml.YAMLError as e:
        return {}, {}, [_yaml_problem(shown, e)]
    finally:
        loader.dispose()

    merged: Dict[str, Dict[str, Any]] = {}
    merged_sources: Dict[str, _Source] = {}
    for base in bases:
        base_sections, base_sources, base_problems = _read_file(path.parent / base, seen + (resolved,))
        problems = base_problems + problems
        _merge(merged, merged_sources, base_sections, base_sources)
    _merge(merged, merged_sources, sections, sources)
    return merged, merged_sources, problems


def _merge(into: Dict[str, Dict[str, Any]], into_sources: Dict[str, _Source],
           sections: Dict[str, Dict[str, Any]], sources: Dict[str, _Source]) -> None:
    for name, values in sections.items():
        into.setdefault(name, {}).update(values)
    into_sources.update(sources)


def _apply_overrides(sections: Dict[str, Dict[str, Any]], sources: Dict[str, _Source],
                     overrides: Sequence[str]) -> List[str]:
    problems = []
    for text in overrides:
        key, sep, raw = text.partition('=')
        key = key.strip()
        if not sep or '.' not in key:
            problems.append(f"{_COMMAND_LINE}: '{text}': expected section.key=value "
                            f"(e.g. optim.lr=1e-3)")
            continue
        section, _, name = key.partition('.')
        if section not in _SECTIONS:
            problems.append(f"{_COMMAND_LINE}: {key}: unknown section '{section}'; did you mean "
                            f"'{_closest(section, list(_SECTIONS))}'?")
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            problems.append(f"{_COMMAND_LINE}: {key}: value '{raw}' is not valid YAML ({e})")
            continue
        sections.setdefault(section, {})[name] = value
        sources[key] = _Source(None, None)
    return problems


# ----------------------------------------------------------------------------------------- validation

def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Union:
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return f'{_type_name(inner[0])} or null'
    if origin is Literal:
        return 'one of ' + ', '.join(repr(a) for a in get_args(annotation))
    if origin in (list, List):
        return f'a list of {_type_name(get_args(annotation)[0])}s'
    if origin in (dict, Dict):
        return 'a mapping'
    return {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string'}.get(
        annotation, getattr(annotation, '__name__', str(annotation)))


class _BadValue(Exception):
    pass


def _coerce(value: Any, annotation: Any) -> Any:
    """`value` converted to `annotation`, or _BadValue. Numbers written as `1e-3` (a string in YAML 1.1)
    are accepted where a number is expected."""
    origin = get_origin(annotation)
    if origin is Union:
        if value is None:
            return None
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return _coerce(value, inner[0])
    if origin is Literal:
        if value in get_args(annotation):
            return value
        raise _BadValue
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise _BadValue
        return [_coerce(v, get_args(annotation)[0]) for v in value]
    if origin in (dict, Dict):
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _BadValue
        return dict(value)
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _BadValue
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _BadValue
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _BadValue from None
        raise _BadValue
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _BadValue
    raise TypeError(f'unsupported config type {annotation}')


def _build(sections: Dict[str, Dict[str, Any]], sources: Dict[str, _Source]) -> Tuple[Config, List[str]]:
    problems = []
    built = {}
    all_keys = list(config_keys())
    for section, factory in _SECTIONS.items():
        types = _section_types(section)
        values = {}
        for name, value in sections.get(section, {}).items():
            key = f'{section}.{name}'
            where = sources.get(key, _Source(None, None))
            if name not in types:
                in_section = _closest(name, list(types))
                elsewhere = [k for k in all_keys if k.split('.', 1)[1] == name]
                hint = f"'{elsewhere[0]}'" if elsewhere else f"'{section}.{in_section}'"
                problems.append(f'{where}: {key}: unknown key; did you mean {hint}?')
                continue
            try:
                values[name] = _coerce(value, types[name])
            except _BadValue:
                problems.append(f'{where}: {key}: expected {_type_name(types[name])}, got {value!r}')
        built[section] = dataclasses.replace(factory(), **values)
    return Config(**built), problems


def _check(config: Config, sources: Dict[str, _Source], origin: Optional[str], check_files: bool) -> List[str]:
    """Checks across keys, of the model and optimizer names and (with `check_files`) of this machine: the
    data and weight files, and the device."""
    def where(key: str) -> str:
        return str(sources.get(key, _Source(origin, None)))

    problems = []
    if not config.model.name:
        problems.append(f"{where('model.name')}: model.name: required (a registered model, e.g. 'unireplknet_a')")
    positive = ('data.batch_size', 'data.recount', 'optim.lr_base_size', 'train.epochs', 'train.grad_accum_steps',
                'train.val_interval', 'sparse.update_frequency', 'output.log_interval')
    for key in positive:
        section, name = key.split('.')
        if getattr(getattr(config, section), name) < 1:
            problems.append(f'{where(key)}: {key}: must be at least 1')
    for key in ('data.workers', 'data.aug_repeats', 'sched.warmup_epochs', 'sched.cooldown_epochs'):
        section, name = key.split('.')
        if getattr(getattr(config, section), name) < 0:
            problems.append(f'{where(key)}: {key}: must not be negative')
    for key in ('data.scale', 'data.ratio'):
        if len(getattr(config.data, key.split('.')[1])) != 2:
            problems.append(f'{where(key)}: {key}: expected two numbers [min, max]')
    if config.train.stop_epoch is not None and not 1 <= config.train.stop_epoch:
        problems.append(f"{where('train.stop_epoch')}: train.stop_epoch: must be at least 1")
    distill = config.train.distill_type != 'none'
    if distill and not config.train.distill_teacher:
        problems.append(f"{where('train.distill_type')}: train.distill_type: "
                        f"'{config.train.distill_type}' needs train.distill_teacher")
    if not distill and config.train.distill_teacher:
        problems.append(f"{where('train.distill_teacher')}: train.distill_teacher: set, but train.distill_type "
                        f"is 'none'")

    from ..zoo.names import check_model_name
    for key in ('model.name', 'train.distill_teacher'):
        section, name = key.split('.')
        model_name = getattr(getattr(config, section), name)
        if model_name and ':' not in model_name:  # a hub name (hf-hub:...) is timm's to resolve
            try:
                check_model_name(model_name)
            except ValueError as e:
                problems.append(f'{where(key)}: {key}: {e}')
    for key in ('optim.lr', 'optim.lr_base', 'optim.layer_decay'):
        value = getattr(config.optim, key.split('.')[1])
        if value is not None and not value > 0:
            problems.append(f'{where(key)}: {key}: must be positive, got {value:g}')
    problems += _layer_decay_problems(config.optim, where)
    sparse = config.sparse
    if not 0 < sparse.sparsity < 1:
        problems.append(f"{where('sparse.sparsity')}: sparse.sparsity: must be above 0 and below 1 (the fraction of "
                        f"masked weights that are zero), got {sparse.sparsity:g}")
    if not 0 < sparse.prune_rate <= 1:
        problems.append(f"{where('sparse.prune_rate')}: sparse.prune_rate: must be above 0 and at most 1 (the fraction "
                        f"of active weights replaced per update), got {sparse.prune_rate:g}")
    if config.data.val_batch_size is not None and config.data.val_batch_size < 1:
        problems.append(f"{where('data.val_batch_size')}: data.val_batch_size: must be at least 1 (or null: "
                        f"data.batch_size)")
    problem = _unknown_optimizer_problem(config.optim.opt)
    if problem:
        problems.append(f"{where('optim.opt')}: optim.opt: {problem}")

    data = config.data
    embedded = data.dataset in EMBEDDED_DATASETS
    if data.dataset.startswith('lkconv/') and not embedded:
        problems.append(f"{where('data.dataset')}: data.dataset: unknown embedded dataset '{data.dataset}'; "
                        f"did you mean '{_closest(data.dataset, EMBEDDED_DATASETS)}'?")
    if not check_files:
        return problems
    from ..utils import device_problem
    problem = device_problem(config.train.device)
    if problem:
        problems.append(f"{where('train.device')}: train.device: {problem}")
    folder_dataset = data.dataset == '' or data.dataset.lower().startswith(('torch/image_folder', 'torch/folder'))
    if folder_dataset:
        if not data.dir:
            problems.append(f"{where('data.dir')}: data.dir: required (the dataset folder, with "
                            f"'{data.train_split}' and '{data.val_split or 'val'}' inside)")
        elif not Path(data.dir).expanduser().exists():
            problems.append(f"{where('data.dir')}: data.dir: directory '{data.dir}' does not exist")
        elif Path(data.dir).expanduser().is_dir():
            for key in ('data.train_split', 'data.val_split'):
                split = getattr(data, key.split('.')[1])
                if split and not _split_exists(Path(data.dir).expanduser(), split):
                    found = sorted(os.listdir(Path(data.dir).expanduser()))
                    listing = ', '.join(found[:5]) + (', ...' if len(found) > 5 else '') if found else 'nothing'
                    problems.append(f"{where(key)}: {key}: no folder or archive for split '{split}' in "
                                    f"'{data.dir}' (found: {listing})")
    for key in ('model.pretrained_path', 'train.distill_teacher_path'):
        section, name = key.split('.')
        path = getattr(getattr(config, section), name)
        if path and not Path(path).expanduser().is_file():
            problems.append(f"{where(key)}: {key}: file '{path}' does not exist")
    return problems


def _layer_decay_problems(optim: OptimConfig, where) -> List[str]:
    rule, num_layers = optim.layer_decay_rule, optim.layer_decay_num_layers
    problems = []
    if rule != 'timm' and optim.layer_decay is None:
        problems.append(f"{where('optim.layer_decay_rule')}: optim.layer_decay_rule: '{rule}' needs optim.layer_decay "
                        f"(the decay rate, e.g. 0.8)")
    if num_layers is not None and rule != 'unireplknet':
        problems.append(f"{where('optim.layer_decay_num_layers')}: optim.layer_decay_num_layers: set, but it is a "
                        f"setting of optim.layer_decay_rule 'unireplknet', not '{rule}'")
    elif num_layers is not None and num_layers < 1:
        problems.append(f"{where('optim.layer_decay_num_layers')}: optim.layer_decay_num_layers: must be at least 1 "
                        f"(or null: 12)")
    return problems


def _unknown_optimizer_problem(opt: str) -> Optional[str]:
    # timm's optimizer factory reads 'lookahead_NAME' as NAME wrapped in Lookahead
    from timm.optim import list_optimizers
    from ..utils import did_you_mean
    names = list_optimizers()
    if opt.lower().split('_')[-1] in names:
        return None
    return f"unknown optimizer '{opt}'{did_you_mean(opt.lower(), names)} (timm.optim.list_optimizers() lists them all)"


# the folder names timm's create_dataset also accepts for a training / an evaluation split
_SPLIT_SYNONYMS = (('train', 'training'), ('val', 'valid', 'validation', 'eval', 'evaluation'))


def _split_exists(root: Path, split: str) -> bool:
    # timm looks for the split's folder (or a synonym) and silently falls back to the root itself, which
    # would read the split folders as classes
    name = split.split('[')[0]  # 'train[:90%]': a slice of the split
    synonyms = next((names for names in _SPLIT_SYNONYMS if name in names), (name,))
    if any((root / folder).exists() for folder in (name, *synonyms)):
        return True
    return any((root / f'{split}{ext}').is_file() for ext in ('.tar', '.tar.gz', '.tgz'))


# ----------------------------------------------------------------------------------------------- API

def _validate(sections: Dict[str, Dict[str, Any]], sources: Dict[str, _Source], problems: List[str],
              overrides: Sequence[str], origin: Optional[str], check_files: bool = True) -> Config:
    problems = problems + _apply_overrides(sections, sources, overrides)
    config, build_problems = _build(sections, sources)
    problems += build_problems
    if not problems:  # cross-key checks only make sense once every key is known and well-typed
        problems += _check(config, sources, origin, check_files)
    if problems:
        raise ConfigError(problems)
    config._sources = (sources, origin)
    return config


def load_config(path: Optional[Union[str, Path]], overrides: Sequence[str] = ()) -> Config:
    """Read, compose, override and validate a config; raises ConfigError listing every problem."""
    if path is None:
        return _validate({}, {}, [], overrides, None)
    sections, sources, problems = _read_file(Path(path))
    return _validate(sections, sources, problems, overrides, str(path))


def parse_config(sections: Dict[str, Any], overrides: Sequence[str] = (), origin: Optional[str] = None,
                 check_files: bool = True) -> Config:
    """Validate a config given as a dict of sections (as `config_to_dict` gives, e.g. from a checkpoint);
    `check_files=False` skips the checks of this machine: data folders, weight files and the device (for a
    run made elsewhere)."""
    copied: Dict[str, Dict[str, Any]] = {}
    sources: Dict[str, _Source] = {}
    problems = []
    for name, values in sections.items():
        where = _Source(origin, None)
        if name not in _SECTIONS:
            problems.append(f"{where}: {name}: unknown section; did you mean '{_closest(str(name), list(_SECTIONS))}'?")
        elif not isinstance(values, dict):
            problems.append(f'{where}: {name}: expected a mapping of keys')
        else:
            copied[name] = dict(values)
            sources.update({f'{name}.{k}': where for k in values})
    return _validate(copied, sources, problems, overrides, origin, check_files)


def config_to_dict(config: Config) -> Dict[str, Dict[str, Any]]:
    return dataclasses.asdict(config)


def dump_config(config: Config) -> str:
    """The resolved config as YAML; `load_config` reads it back to an equal Config."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False)
