"""The search ends at its target: the network derived from the supernet as the
last search epoch leaves it is within the derivation's tolerance of the MACs target, so that the
discretizer changes nothing."""
import pytest

from conftest import small_config
from maskednas.derive import derive
from maskednas.pipeline.setup import prepare_search


@pytest.mark.xfail(strict=False, reason=(
    "known defect, found with torch 2.14.1: in its first architecture epoch this search falls to "
    "0.90 of its target with ops too cheap to climb back, so it never crosses the target and "
    "the target hold (mask logits only, no op promotion) never starts; it ends at 0.89"))
def test_a_short_default_search_ends_on_its_target(tmp_path):
    cfg = small_config(tmp_path, "search.epochs=5", "search.warmup_epochs=1",
                       "search.targets.macs.fraction=0.4")
    searcher = prepare_search(cfg, tmp_path)
    metrics = searcher.run()
    target = searcher.targets["macs"]
    assert abs(metrics["discrete_macs"] - target) <= cfg.derive.tolerance * target
    d = cfg.derive
    derived = derive(searcher.net, target, d.tolerance, d.round_to, d.min_channels)
    assert derived.arch.cost().macs == metrics["discrete_macs"]
    kept = {g: searcher.net.masks[g].kept().nonzero().flatten().tolist() for g in derived.keep}
    assert {g: k.tolist() for g, k in derived.keep.items()} == kept  # the masks' own channels

