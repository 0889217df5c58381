"""The choices of a benchmark run, importable without torch: `lkconv --help` lists them."""

FORMS = ('deploy', 'train')  # re-parameterised (timm.utils.reparameterize_model) / as built for training
BENCH_MODES = ('both', 'inference', 'train', 'profile')
PRECISION_NAMES = ('fp32', 'amp_bf16', 'amp_fp16')  # amp_*: torch.autocast to bfloat16 / float16
