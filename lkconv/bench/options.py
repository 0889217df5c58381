"""The choices of a benchmark run, importable without torch: `lkconv --help` lists them."""

FORMS = ('deploy', 'train')  # re-parameterised (timm.utils.reparameterize_model) / as built for training
BENCH_MODES = ('both', 'inference', 'train', 'profile')
PRECISION_NAMES = ('fp32', 'amp_bf16', 'amp_fp16')  # amp_*: torch.autocast to bfloat16 / float16
KERNEL_DTYPES = ('float32', 'float16', 'bfloat16')  # what the kernel checks run in
KERNEL_MODELS = ('unireplknet_t', 'van_b2', 'lsnet_t', 'inceptionnext_tiny')  # whose convolutions they check
