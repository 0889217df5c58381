"""The choices of a benchmark run, importable without torch: `lkconv --help` lists them."""

FORMS = ('deploy', 'train')  # re-parameterised (timm.utils.reparameterize_model) / as built for training
BENCH_MODES = ('both', 'inference', 'train', 'profile')
PRECISION_NAMES = ('fp32', 'amp_bf16', 'amp_fp16')  # amp_*: torch.autocast to bfloat16 / float16
KERNEL_DTYPES = ('float32', 'float16', 'bfloat16')  # what the kernel checks run in
# the models whose convolutions the kernels are checked and timed at: every geometry the zoo runs
KERNEL_MODELS = ('unireplknet_t', 'van_b2', 'lsnet_t', 'inceptionnext_tiny', 'replknet_31b', 'slak_tiny')
# under the CPU interpreter (smoke runs) the first four: RepLKNet's and SLaK's 27 to 51 tap kernels take minutes
# there; the kernel tests check those geometries on their own
INTERPRETED_KERNEL_MODELS = KERNEL_MODELS[:4]
