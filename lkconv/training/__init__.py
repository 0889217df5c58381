"""Pieces of the training engine used by `lkconv.training.train` and `lkconv.training.validate`: distributed set-up, the
run folder, checkpoints and atomic writes, the per-epoch summary, progress output, losses (with
distillation) and the train / evaluate loops."""
