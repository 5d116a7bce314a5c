"""Bilevel search: the architect (alpha and masks on the architecture's batches, first or second order),
the cost penalty, the search loop, checkpoints and TensorBoard logging."""
