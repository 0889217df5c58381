"""Training configs: every shipped recipe validates, every registered model has one, and bad configs
fail before any work with one clear line per problem (file, line, key, closest valid key)."""
from pathlib import Path

import pytest
import yaml

import lkconv
from lkconv.cli import main
from lkconv.training.config import ConfigError, Config, dump_config, load_config, parse_config, config_to_dict

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'
RECIPES = sorted(p for p in CONFIGS.rglob('*.yaml') if 'base' not in p.relative_to(CONFIGS).parts)


@pytest.fixture(scope='module')
def imagenet_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('imagenet')
    (root / 'train' / 'n01').mkdir(parents=True)
    (root / 'val' / 'n01').mkdir(parents=True)
    return root


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize('recipe', RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_validates(recipe, imagenet_dir):
    overrides = [] if recipe.parent.name == 'demo' else [f'data.dir={imagenet_dir}']
    config = load_config(recipe, overrides)
    assert config.model.name
    # a resolved config reads back to the same config
    assert load_config(write(imagenet_dir / 'resolved.yaml', dump_config(config))) == config


def test_every_registered_model_has_a_recipe():
    recipes = {load_config(p, ['data.dir=.', 'data.dataset=lkconv/digits']).model.name.split('.')[0]
               for p in RECIPES if p.parent.name != 'demo'}
    missing = [name for name in lkconv.list_models() if name not in recipes]
    assert not missing, f'no ImageNet recipe in configs/ for: {missing}'


def test_recipes_compose_from_bases(imagenet_dir):
    """Values come from the base chain, the variant file and the command line, later ones winning."""
    config = load_config(CONFIGS / 'unireplknet' / 'unireplknet_t_in1k.yaml',
                         [f'data.dir={imagenet_dir}', 'optim.lr=1e-3', 'data.scale=[0.5, 1.0]'])
    assert config.data.workers == 8  # base/imagenet.yaml
    assert config.optim.lr_base == 4e-3 and config.sched.warmup_epochs == 20  # base/unireplknet_in1k.yaml
    assert config.model.drop_path_rate == 0.2 and config.data.mixup == 0.8  # the variant
    assert config.optim.lr == 1e-3 and isinstance(config.optim.lr, float)  # YAML 1.1 reads 1e-3 as a string
    assert config.data.scale == [0.5, 1.0]
    ft = load_config(CONFIGS / 'unireplknet' / 'unireplknet_l_in22k_ft_in1k_384.yaml', [f'data.dir={imagenet_dir}'])
    assert (ft.model.name, ft.model.num_classes, ft.data.img_size, ft.optim.layer_decay) == \
        ('unireplknet_l.in22k', 1000, 384, 0.8)
    assert ft.train.smoothing == 0.3 and ft.train.model_ema and ft.data.mixup == 0.0


def test_unknown_key_names_file_line_and_closest_key(tmp_path):
    path = write(tmp_path / 'bad.yaml', 'model:\n  name: unireplknet_a\noptim:\n  opt: adamw\n  lrr: 1e-3\n')
    with pytest.raises(ConfigError) as error:
        load_config(path, ['data.dataset=lkconv/digits'])
    assert error.value.problems == [f"{path}:5: optim.lrr: unknown key; did you mean 'optim.lr'?"]


def test_key_in_the_wrong_section_points_to_the_right_one(tmp_path):
    path = write(tmp_path / 'bad.yaml', 'model:\n  name: unireplknet_a\ntrain:\n  batch_size: 32\n')
    with pytest.raises(ConfigError, match=r"bad.yaml:4: train.batch_size: unknown key; did you mean "
                                          r"'data.batch_size'\?"):
        load_config(path, ['data.dataset=lkconv/digits'])


def test_wrong_type_names_key_and_line(tmp_path):
    path = write(tmp_path / 'bad.yaml', 'model:\n  name: unireplknet_a\n  pretrained: yes please\n'
                                        'train:\n  epochs: 1.5\n')
    with pytest.raises(ConfigError) as error:
        load_config(path, ['data.dataset=lkconv/digits'])
    assert error.value.problems == [
        f"{path}:3: model.pretrained: expected true or false, got 'yes please'",
        f'{path}:5: train.epochs: expected an integer, got 1.5',
    ]


def test_bad_choice_and_unknown_section(tmp_path):
    path = write(tmp_path / 'bad.yaml', 'modle:\n  name: x\nmodel:\n  name: unireplknet_a\n'
                                        'optim:\n  clip_mode: l2\n')
    with pytest.raises(ConfigError) as error:
        load_config(path, ['data.dataset=lkconv/digits'])
    text = str(error.value)
    assert f"{path}:1: modle: unknown section; did you mean 'model'?" in text
    assert f"{path}:6: optim.clip_mode: expected one of 'norm', 'value', 'agc', got 'l2'" in text


def test_missing_data_directory(tmp_path):
    path = write(tmp_path / 'run.yaml', f'model:\n  name: unireplknet_a\ndata:\n  dir: {tmp_path}/nowhere\n')
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert error.value.problems == [f"{path}:4: data.dir: directory '{tmp_path}/nowhere' does not exist"]
    # from the command line, too
    with pytest.raises(ConfigError, match=r"^command line: data.dir: directory '/no/such/dir' does not exist$"):
        load_config(path, ['data.dir=/no/such/dir'])


def test_missing_split_folder_is_reported(tmp_path):
    (tmp_path / 'data' / 'training').mkdir(parents=True)
    path = write(tmp_path / 'run.yaml', f'model:\n  name: unireplknet_a\ndata:\n  dir: {tmp_path}/data\n')
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert error.value.problems == [
        f"{path}: data.val_split: no folder or archive for split 'validation' in '{tmp_path}/data' "
        f"(found: training)"]


def test_unknown_model_and_missing_name(tmp_path):
    with pytest.raises(ConfigError, match=r"command line: model.name: unknown model 'unireplknet_tt'; "
                                          r"did you mean: unireplknet_t\b"):
        load_config(None, ['model.name=unireplknet_tt', 'data.dataset=lkconv/digits'])
    with pytest.raises(ConfigError, match=r'model.name: required'):
        load_config(None, ['data.dataset=lkconv/digits'])


def test_bad_override_syntax_and_yaml(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(None, ['model.name=unireplknet_a', 'lr=1e-3', 'data.dataset=lkconv/digits'])
    assert error.value.problems == ["command line: 'lr=1e-3': expected section.key=value (e.g. optim.lr=1e-3)"]
    path = write(tmp_path / 'broken.yaml', 'model:\n  name: [unclosed\n')
    with pytest.raises(ConfigError, match=rf'^{path}:\d+: not valid YAML'):
        load_config(path)


def test_base_cycle_is_reported(tmp_path):
    write(tmp_path / 'a.yaml', 'base: b.yaml\nmodel:\n  name: unireplknet_a\n')
    write(tmp_path / 'b.yaml', 'base: a.yaml\n')
    with pytest.raises(ConfigError, match='cycle'):
        load_config(tmp_path / 'a.yaml', ['data.dataset=lkconv/digits'])


def test_distillation_needs_a_teacher():
    with pytest.raises(ConfigError, match=r"train.distill_type: 'hard' needs train.distill_teacher"):
        load_config(None, ['model.name=lsnet_t_distill', 'data.dataset=lkconv/digits', 'train.distill_type=hard'])


def test_parse_config_round_trips_a_checkpoint_config():
    config = load_config(None, ['model.name=van_b0', 'data.dataset=lkconv/digits', 'optim.betas=[0.9, 0.99]'])
    assert parse_config(config_to_dict(config)) == config
    assert parse_config(yaml.safe_load(dump_config(config))) == config
    assert isinstance(Config().data.scale, list)


def test_cli_reports_config_errors(tmp_path):
    path = write(tmp_path / 'bad.yaml', 'model:\n  name: unireplknet_a\ndata:\n  dataset: lkconv/digits\n'
                                        '  batchsize: 8\n')
    with pytest.raises(SystemExit, match=r"invalid config:\n.*bad.yaml:5: data.batchsize: unknown key; "
                                         r"did you mean 'data.batch_size'\?"):
        main(['train', '-c', str(path)])
