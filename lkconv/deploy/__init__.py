"""Deployment: re-parameterised checkpoints (`lkconv reparam`), ONNX export checked with onnxruntime
(`lkconv export`) and a timm hub folder from a run (`lkconv hub-export`).

Nothing here is imported by `import lkconv`.
"""
