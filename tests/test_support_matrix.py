"""The support matrix over every model (`benchmarks/support_matrix.py --all`): each model checked
in its own process under time and memory limits, and a verdict that a wrong or barely pruned
network fails."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision

import benchmarks.support_matrix as matrix
from tests.test_user_model import SpareNet

SPARE = "tests.test_user_model:spare_net"


def passing() -> dict:
    return {"gap": 1e-7, "scale": 1.0, "macs": 500, "dense_macs": 1000, "params": 10,
            "fvcore_macs": 500, "fvcore_params": 12, "unused_params": 2, "groups": 3,
            "skipped_groups": 1, "left_unpruned": ["left unpruned: a: why"]}


@pytest.mark.parametrize("change, reason", [
    ({}, None),
    ({"gap": 1e-3}, "wrong: the pruned network differs from the hard-masked one by 1.0e-03"),
    ({"unused_params": 0}, "wrong: the analytic MACs or params differ from fvcore's count"),
    ({"macs": 800, "fvcore_macs": 800}, "barely pruned: half the MACs not reached (0.800 of dense)"),
    ({"skipped_groups": 2}, "mostly whole: 2 of 5 channel groups left whole (left unpruned: a: why)"),
])
def test_the_verdict_fails_wrong_and_barely_pruned_networks(change, reason):
    why = matrix.verdict({**passing(), **change})
    assert why == reason if reason is None else why.startswith(reason), why


def test_each_model_runs_in_its_own_process_with_its_result_and_peak_memory():
    r = matrix.run_isolated(SPARE, 8)
    assert r["status"] == "pass" and r["unused_params"] == 600 and r["attention"] is False
    assert r["macs"] == r["fvcore_macs"] < r["dense_macs"] and 0.1 < r["peak_gb"] < matrix.MEMORY_GB


def test_a_model_past_the_time_limit_is_killed_and_recorded(monkeypatch):
    monkeypatch.setattr(matrix, "TIMEOUT_S", 0.2)
    r = matrix.run_isolated(SPARE, 8)
    assert (r["status"], r["stage"], r["reason"]) == ("fail", "limit", "over 0.2 s")


def test_a_model_past_the_memory_limit_is_killed_and_a_crash_is_named(monkeypatch):
    monkeypatch.setattr(matrix, "MEMORY_GB", 0.01)
    r = matrix.run_isolated(SPARE, 8)
    assert (r["status"], r["stage"], r["reason"]) == ("fail", "limit", "over 0.01 GB of memory")
    monkeypatch.undo()
    r = matrix.run_isolated("tests.test_support_matrix:exits", 8)
    assert (r["stage"], r["reason"]) == ("crash", "the process exited with 3: leaving now")
    assert r["attention"] is False  # the child's first line, from the first build


_BUILDS = []


def exits(num_classes: int = 10):
    """A factory whose process dies without a Python error (as one killed by the OS does) the
    second time it builds (the first build, which looks for attention, gets a plain network)."""
    import os
    import sys

    _BUILDS.append(num_classes)
    if len(_BUILDS) == 1:
        from tests.test_user_model import SpareNet
        return SpareNet(num_classes)
    print("leaving now", file=sys.stderr, flush=True)
    os._exit(3)


class Attending(torch.nn.Module):
    """Token self-attention: a product of two activations."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.qk, self.fc = torch.nn.Conv2d(3, 8, 1), torch.nn.Linear(8, num_classes)

    def forward(self, x):
        t = self.qk(x).flatten(2)  # (N, C, HW)
        return self.fc((torch.softmax(t.transpose(1, 2) @ t, -1) @ t.transpose(1, 2)).mean(1))


class TorchAttending(torch.nn.Module):
    """`nn.MultiheadAttention`, whose products run inside one functional call."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.embed, self.attention = torch.nn.Conv2d(3, 8, 1), torch.nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = torch.nn.Linear(8, num_classes)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        return self.fc(self.attention(t, t, t, need_weights=False)[0].mean(1))


@pytest.mark.parametrize("model, attends", [(Attending(), True), (TorchAttending(), True), (SpareNet(), False),
                                            (torchvision.models.mobilenet_v3_small(), False)])
def test_attention_is_a_product_of_two_activations_and_se_gates_are_not(model, attends):
    assert matrix.uses_attention(model, 16) is attends
    assert all(p.requires_grad for p in model.parameters())  # left as it was


def test_a_failure_names_the_step_it_stopped_at():
    r = matrix.check_one("tests.test_user_model:einsum_net", 8)  # an op fvcore counts, we don't
    assert (r["status"], r["stage"]) == ("fail", "build")
    assert r["reason"].startswith("CostMismatchError: tests.test_user_model:einsum_net: fvcore counts")


def test_the_markdown_counts_networks_with_and_without_attention_and_lists_every_failure():
    rows = {"a": {**passing(), "source": "a", "size": 64, "status": "pass", "stage": "", "reason": "",
                  "attention": False, "build_s": 1.0, "wall_s": 5.0, "peak_gb": 1.0},
            "b": {"source": "b", "size": 224, "status": "fail", "stage": "build", "reason": "X: y|z",
                  "attention": True, "wall_s": 7.0, "peak_gb": 2.0}}
    text = matrix.matrix_markdown({"timm families skipped": {"fam": "E: x"}, "timm": rows})
    assert "Timm families skipped (no model of theirs builds here): fam (E: x)" in text
    assert "## timm: 1 of 2 pass" in text
    assert "without token attention: 1 of 1 pass; with it (the transformer work's): 0 of 1" in text
    assert "| b | 224 | yes | build | X: y/z |" in text and "Passing: a." in text
    assert text.index("| b | 224 |  | 7.0 | 2.0 |") < text.index("| a | 64 | 1.0 | 5.0 | 1.0 |")


def test_run_all_checks_models_in_parallel_children_and_keeps_their_order(tmp_path, monkeypatch):
    models = {SPARE: 8, "tests.test_user_model:sliced_net": 8}
    monkeypatch.setattr(matrix, "RESULTS", tmp_path)
    monkeypatch.setattr(matrix, "torchvision_models", lambda: models)
    matrix.run_all("torchvision", jobs=2)
    rows = json.loads((tmp_path / "support-matrix-all.json").read_text())["torchvision"]
    assert list(rows) == list(models) and [r["status"] for r in rows.values()] == ["pass", "fail"]
    assert rows["tests.test_user_model:sliced_net"]["reason"].startswith("barely pruned")
    assert "## torchvision: 1 of 2 pass" in (tmp_path / "support-matrix-all.md").read_text()
