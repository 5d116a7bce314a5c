"""Search options end to end on a tiny space: second order, bf16 autocast, channels_last,
and the plain-DARTS expected-cost penalty."""
import math

import pytest
import torch

from conftest import small_config
from maskednas.pipeline.setup import prepare_search


@pytest.mark.parametrize("overrides", [
    ["search.order=2"],
    ["amp=true"],
    ["channels_last=true"],
    ["search.target.estimator=expected"],
], ids=["second-order", "bf16-autocast", "channels-last", "expected-cost"])
def test_search_mode_trains_and_moves_the_architecture(tmp_path, overrides):
    cfg = small_config(tmp_path, "search.epochs=2", "search.warmup_epochs=1", *overrides)
    searcher = prepare_search(cfg, tmp_path)
    before = [p.detach().clone() for p in searcher.net.arch_parameters()]
    metrics = searcher.run()
    assert all(math.isfinite(metrics[k]) for k in ("train_loss", "arch_loss", "expected_macs"))
    moved = [not torch.equal(b, p) for b, p in zip(before, searcher.net.arch_parameters())]
    assert all(moved)
