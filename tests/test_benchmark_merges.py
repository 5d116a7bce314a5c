"""Benchmarks run in parts (a seed, a tag) and merge them: what a merged table may combine."""
import json

import pytest

from benchmarks import prune_resnet, search_ablation


def _row(seed, method, fraction, ms, dense_ms=None, cost=None, **extra):
    row = {"seed": seed, "fraction": fraction, "method": method, "val_acc": 0.5, "test_acc": 0.5,
           "macs": 1e6, "params": 1e3, "seconds": 1.0, "ms_b1": ms, "ms_b64": 10 * ms, **extra}
    if dense_ms is not None:
        row["dense_ms_b1"] = dense_ms
    if cost:
        row["cost"] = cost
    return row


def _part(path, rows):
    path.write_text(json.dumps({"args": {}, "rows": rows}))


def test_a_speed_up_is_taken_against_the_dense_network_of_its_own_part(tmp_path):
    # two parts of seed 0, each with the dense network it trained and timed (4 ms, then 8 ms)
    _part(tmp_path / "prune-resnet20-seed0.json",
          [_row(0, "dense", 1.0, 4.0), _row(0, "ours", 0.25, 2.0)])
    _part(tmp_path / "prune-resnet20-50-seed0.json",
          [_row(0, "dense", 1.0, 8.0), _row(0, "ours", 0.5, 6.0)])
    rows = prune_resnet.main(["--merge", "--out", str(tmp_path)])
    dense = [r for r in rows if r["method"] == "dense"]
    assert len(dense) == 1 and dense[0]["ms_b1"] == 4.0  # the dense line: the seed's first part
    ratio = {r["fraction"]: r["ms_b1"] / r["dense_ms_b1"] for r in rows}
    assert ratio == {1.0: 1.0, 0.25: 0.5, 0.5: 0.75}  # 6 / 8, not 6 / 4
    table = (tmp_path / "prune-resnet20.md").read_text()
    assert "| 50% | ours |" in table and "| 0.75 |" in table


def test_latency_parts_merge_alone_and_never_pair_a_baseline_with_another_parts_ours(tmp_path):
    fields = {"latency_fraction": 0.5, "final_latency_fraction": 0.5}
    _part(tmp_path / "prune-resnet20-seed0.json", [_row(0, "dense", 1.0, 4.0)])  # a MACs part
    _part(tmp_path / "prune-resnet20-latency-seed0.json",
          [_row(0, "dense", 1.0, 4.0, cost="latency", final_latency_fraction=1.0),
           _row(0, "ours", 0.5, 2.0, cost="latency", **fields),
           _row(0, "tp_magnitude", 0.5, 2.0, cost="latency", **fields)])
    rows = prune_resnet.main(["--merge", "--cost", "latency", "--out", str(tmp_path)])
    assert [r["method"] for r in rows] == ["dense", "ours", "tp_magnitude"]
    assert "latency / dense: tuned | final |" in (tmp_path / "prune-resnet20-latency.md").read_text()
    macs_rows = prune_resnet.main(["--merge", "--out", str(tmp_path)])  # its glob sees both kinds
    assert [r["method"] for r in macs_rows] == ["dense"] and "cost" not in macs_rows[0]
    _part(tmp_path / "prune-resnet20-latency-x-seed0.json",
          [_row(0, "dense", 1.0, 4.0, cost="latency", final_latency_fraction=1.0),
           _row(0, "tp_magnitude", 0.5, 2.0, cost="latency", **fields)])
    with pytest.raises(SystemExit):
        prune_resnet.main(["--merge", "--cost", "latency", "--out", str(tmp_path)])


def test_ablation_parts_of_different_targets_are_refused(tmp_path, capsys):
    row = {"variant": next(iter(search_ablation.VARIANTS)), "val_acc": 0.5, "test_acc": 0.5,
           "slimmed_val_acc": 0.4, "slimmed_test_acc": 0.4, "macs": 1e5, "search_end": 1.0, "seconds": 1.0}
    for seed, fraction in ((0, 0.12), (1, 0.12)):
        (tmp_path / f"search_ablation-seed{seed}.json").write_text(json.dumps(
            {"fraction": fraction, "target_macs": fraction * 1e6, "rows": [{**row, "seed": seed}]}))
    search_ablation.main(["--merge", "--out", str(tmp_path), "--fraction", "0.5"])
    assert "target 12% of the backbone's MACs" in (tmp_path / "search_ablation.md").read_text()
    (tmp_path / "search_ablation-seed2.json").write_text(json.dumps(
        {"fraction": 0.25, "target_macs": 0.25e6, "rows": [{**row, "seed": 2}]}))
    with pytest.raises(SystemExit):
        search_ablation.main(["--merge", "--out", str(tmp_path)])
    assert "different targets" in capsys.readouterr().err
