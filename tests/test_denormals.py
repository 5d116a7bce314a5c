"""A cold search (gates sigmoid(logit / 0.01)) makes subnormal floats, which a CPU computes with
several times more slowly: every run flushes them to zero."""
import torch

from conftest import small_config
from maskednas.pipeline.setup import prepare_search


def test_a_run_flushes_subnormal_floats_to_zero(tmp_path):
    torch.set_flush_denormal(False)
    try:
        prepare_search(small_config(tmp_path), tmp_path)
        assert (torch.tensor([1e-20]) * torch.tensor([1e-20])).item() == 0.0
    finally:
        torch.set_flush_denormal(False)
