"""`lkconv hub-export`: a model with its preprocessing and class names as a timm / Hugging Face hub folder.

The folder is what timm's own `save_for_hf` writes (and `push_to_hf_hub` uploads): `model.safetensors`
and `config.json` with the architecture, the reconstruction arguments (`model_args`: class count, the
run's model kwargs), the pretrained cfg (input size, interpolation, mean/std, crop) and `label_names`.
After `import lkconv`, `timm.create_model('local-dir:DIR', pretrained=True)` builds the same model from it
and `timm.data.resolve_data_config(model=model)` gives the same preprocessing; uploaded as it is
(`huggingface-cli upload USER/NAME DIR`), it loads with `'hf-hub:USER/NAME'`.

The weights are those of the training form: that is the model timm builds from config.json (a deploy
checkpoint's fused state_dict does not fit it, so deploy checkpoints are refused);
`timm.utils.reparameterize_model` fuses after loading. The command is in `lkconv.deploy.commands`.
"""
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Dict, Union

__all__ = ['save_hub_folder', 'check_hub_target']


def check_hub_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"'{out}' exists and is not an empty folder; choose a new one")


def save_hub_folder(model, data_config: Dict[str, Any], out: Union[str, Path]) -> Path:
    """Write `model` (a timm-built model) and its data config, with the class names it carries, as a hub
    folder at `out`, which must not exist or be empty. The folder appears complete or not at all, and only
    once timm has rebuilt the model from it."""
    from timm.models import save_for_hf

    from ..zoo.deploy_checkpoint import split_label_names
    from ..zoo.checkpoints import LABEL_NAMES
    out = Path(out)
    check_hub_target(out)
    preprocessing, label_names = split_label_names(data_config, model.num_classes)
    out.parent.mkdir(parents=True, exist_ok=True)
    # written beside the target and renamed into place (a rename may replace an empty folder)
    temp = out.with_name(f'.{out.name}.tmp-{uuid.uuid4().hex[:8]}')
    temp.mkdir()
    try:
        save_for_hf(model, str(temp), model_config={LABEL_NAMES: label_names} if label_names else None,
                    safe_serialization=True, data_config=preprocessing)
        # safetensors writes its file readable by its owner only; give it config.json's (umask) mode
        mode = (temp / 'config.json').stat().st_mode
        for path in temp.iterdir():
            path.chmod(mode)
        _check_rebuilds(temp, model)
        os.replace(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return out


def _check_rebuilds(folder: Path, model) -> None:
    """timm builds the model from the folder and loads its weights strictly (raises ValueError if not):
    catches a model whose construction arguments timm did not record, or weights of another form."""
    import timm
    try:
        timm.create_model(f'local-dir:{folder}', pretrained=True)
    except (RuntimeError, TypeError) as e:  # weights that do not fit; an argument the constructor refuses
        raise ValueError(f'timm cannot rebuild {type(model).__name__} from the folder written: '
                         f"{' '.join(str(e).split())[:300]}") from e
