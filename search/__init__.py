"""Bilevel search: config, architect (alpha and masks), cost penalty, loop, checkpoints,
TensorBoard logging and fine-tuning. Heavy modules are imported where they are used."""
