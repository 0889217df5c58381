"""Measurements: kernel correctness and speed at the models' own shapes, and the one-command GPU check.

* `kernels`: the Triton depthwise-conv and SKA kernels against PyTorch, at the convolution geometries
  the zoo's models run (`lkconv bench-kernels`);
* `gpu_check`: everything lkconv promises on a GPU, verified and measured in one bounded run
  (`make gpu-check`); its sections are in `gpu_sections`.

Nothing here is imported by `import lkconv`.
"""
