"""ONNX export of a (re-parameterised) model and its check against onnxruntime.

Export goes through `torch.onnx.export(..., dynamo=True)`, the exporter PyTorch maintains (it needs the
`onnxscript` package), at its default opset. It is the one that translates FFTs (FDConv) into ONNX's
DFT operator; SKA (LSNet) exports as the plain PyTorch computation it is defined by, because ONNX export
traces with the PyTorch backends of `lkconv.layers` selected (a GPU kernel would be an opaque custom op).

What a user of the file needs to feed it and read its output is stored in the model's `metadata_props`
(see `onnx_metadata`): the timm architecture, the preprocessing as JSON and the class names as JSON.
"""
import json
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn

from ..zoo.deploy_checkpoint import split_label_names
from ..layers import layer_backends
from ..utils import relative_error  # the parity measure export checks use; importable from here too
from ..zoo.checkpoints import LABEL_NAMES

__all__ = ['export_onnx', 'onnx_metadata', 'read_onnx_metadata', 'run_onnx', 'relative_error']

# metadata_props keys; values are strings, the data config and class names JSON
ARCHITECTURE, DATA_CONFIG = 'architecture', 'data_config'


def onnx_metadata(name: str, data_config: Dict[str, Any], num_classes: int) -> Dict[str, str]:
    """metadata_props for a model: 'architecture' (timm name), 'data_config' (JSON object: input_size,
    interpolation, mean, std, crop_pct, crop_mode) and, where the data config carries class names,
    'label_names' (JSON list, one per output)."""
    preprocessing, label_names = split_label_names(data_config, num_classes)
    metadata = {ARCHITECTURE: name, DATA_CONFIG: json.dumps(preprocessing)}
    if label_names is not None:
        metadata[LABEL_NAMES] = json.dumps(label_names)
    return metadata


def read_onnx_metadata(path: Union[str, Path]) -> Dict[str, Any]:
    """An exported file's metadata_props, the JSON ones decoded (data_config's input_size is a list)."""
    import onnx
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    for key in (DATA_CONFIG, LABEL_NAMES):
        if key in props:
            props[key] = json.loads(props[key])
    return props


def export_onnx(
        model: nn.Module,
        example: torch.Tensor,
        path: Union[str, Path],
        dynamic_batch: bool = True,
        opset: Optional[int] = None,
        metadata: Optional[Dict[str, str]] = None,
) -> Path:
    """Write `model` (in eval mode) as ONNX, traced on `example` (B, C, H, W); input 'input', output 'output'.

    With `dynamic_batch` the batch dimension is symbolic, so the file runs at any batch size; the image
    size is fixed at the example's (as in timm's `onnx_export`): several architectures derive shapes from
    it (LSNet's attention biases, FDConv's band masks). `metadata` (from `onnx_metadata`) is written to
    the model's metadata_props.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    dynamic_shapes = None
    if dynamic_batch:
        dynamic_shapes = ({0: torch.export.Dim('batch')},)
        if example.shape[0] == 1:  # torch.export specialises a size-1 dimension: trace at batch 2
            example = example.expand(2, -1, -1, -1)
    with layer_backends(depthwise='torch', ska='torch'), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # exporter progress warnings about decompositions and opsets
        program = torch.onnx.export(
            model, (example,), input_names=['input'], output_names=['output'], dynamic_shapes=dynamic_shapes,
            opset_version=opset, dynamo=True, verbose=False, report=False)
    program.model.metadata_props.update(metadata or {})
    program.save(str(path))
    return path


def run_onnx(path: Union[str, Path], x: torch.Tensor) -> torch.Tensor:
    """Run an exported file with onnxruntime on the CPU."""
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    output, = session.run(None, {session.get_inputs()[0].name: x.detach().cpu().numpy()})
    return torch.from_numpy(output)
