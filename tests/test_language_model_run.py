"""Language models end to end: byte-level text data, a search on it, perplexity in the summary,
the export; and the one-shot importance baselines the benchmark compares with."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

pytest.importorskip("transformers")

from maskednas import load_config, run
from maskednas.datasource import DataError
from maskednas.datasource.text import decode, encode, token_data, windows
from maskednas.derive.importance import group_scores, per_weight_scores, prune_to_params, uniform_keep
from maskednas.export import load
from maskednas.pipeline.config import ConfigError
from maskednas.pipeline.setup import load_data
from maskednas.supernet.user_model import ModelSpaceConfig, UserModel
from maskednas.training.losses import cross_entropy

TINY = ("model.hf_config={hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, "
        "num_attention_heads: 4, num_key_value_heads: 2}")


def test_text_becomes_windows_of_next_tokens_with_a_contiguous_test_split():
    """Byte-level tokens round-trip through UTF-8; each window's targets are its inputs one
    token later; the test split is the text's last 10%, so no test window overlaps a training
    one; the validation split is carved from the training windows."""
    text = "Größe: ≥ 1\n" * 50
    assert decode(encode(text)) == text and int(encode(text).max()) < 256
    x, y = windows(torch.arange(11), 5)
    assert x.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]] and y.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    data = token_data("t", "".join(chr(97 + i % 26) for i in range(1001)), 9)
    assert (len(data.x_train), len(data.x_test)) == (99, 11)  # 900 and 101 tokens
    assert data.x_test[0, 0] == 900 % 26 + 97 and data.num_classes == 256
    cfg = load_config("digits", ["data.name=pydoc", "data.sequence_length=32"])
    pydoc = load_data(cfg)
    assert pydoc.x_train.shape[1] == 32 and pydoc.x_val is not None
    assert len(pydoc.x_val) == round(0.1 * (len(pydoc.x_train) + len(pydoc.x_val)))


def test_a_language_model_searches_and_exports_with_perplexity(tmp_path):
    """`run` on pydoc with an hf: LLaMA: the search trains on token windows, the derived model
    equals the hard-masked supernet, the summary reports perplexity = exp(loss per token), the
    export rebuilds and reproduces it."""
    cfg = load_config("prune_llama_pydoc", [TINY, "data.sequence_length=32", "data.batch_size=64",
                                            "search.epochs=1", "finetune.epochs=0", "threads=null"])
    data = load_data(cfg)
    data = type(data)(data.name, data.x_train[:256], data.y_train[:256], data.x_test[:64],
                      data.y_test[:64], data.num_classes, data.x_val[:64], data.y_val[:64])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = run(cfg, tmp_path / "run", data=data, report=lambda line: None)
    assert metrics["test_perplexity"] == pytest.approx(math.exp(metrics["test_loss"]))
    assert 1 < metrics["test_perplexity"] < 256  # better than uniform over bytes
    assert metrics["slim_max_abs_diff"] <= 1e-5 * metrics["slim_output_scale"]
    assert metrics["params"] <= 1.03 * 0.7 * metrics["dense_params"]  # the config's params target
    model = load(tmp_path / "run" / "export").eval()
    with torch.no_grad():
        logits = model(data.x_test[:4])
    assert logits.shape == (4, 32, 256)
    assert cross_entropy(logits, data.y_test[:4]).item() < math.log(256)


@pytest.mark.parametrize("config, overrides, message", [
    ("digits", ["data.name=pydoc"], "is text"),  # the macro space on text
    ("prune_llama_pydoc", [TINY, "data.name=digits"], "reads text"),  # a language model on images
    ("prune_llama_pydoc", [TINY, "export.quantize=[int8]"], "exports in fp32"),
    ("prune_llama_pydoc", [TINY, "search.targets={latency_ms: {fraction: 0.5}}"], "use a macs or params target"),
    ("prune_llama_pydoc", [TINY, "data.num_classes=100"], "leave data.num_classes unset"),
])
def test_text_and_language_models_go_together(config, overrides, message, tmp_path):
    cfg = load_config(config, [*overrides, "search.epochs=1", "search.warmup_epochs=0"])
    with pytest.raises((ConfigError, DataError), match=message):
        run(cfg, tmp_path / "run", report=lambda line: None)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_importance_baselines_prune_uniformly_to_the_parameter_target():
    """Magnitude scores are the groups' summed squares (a head: its q, k, v rows and o_proj
    columns); Taylor and Wanda scores are finite and non-negative; every group kept at the same
    fraction computes as the hard-masked network, and a parameter target is met from below (an
    unreachable one is refused)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = UserModel(ModelSpaceConfig(source="hf:llama", embedding_width=False, hf_config=dict(
            hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)), 1, 256, 16).eval()
    scores = group_scores(net, per_weight_scores(net, "magnitude", [], cross_entropy))
    head = net.heads[next(iter(net.heads))]
    attention = net.model.get_submodule(head.attention)
    by_hand = sum(getattr(attention, p).weight[:8 if p != "q_proj" else 16].pow(2).sum()
                  for p in ("q_proj", "k_proj", "v_proj")) + attention.o_proj.weight[:, :16].pow(2).sum()
    assert float(scores[head.key][0]) == pytest.approx(float(by_hand), rel=1e-6)
    x = net.random_input(4, torch.Generator().manual_seed(0))
    batches = [(x, torch.roll(x, -1, 1))]
    for score in ("taylor", "wanda"):
        s = group_scores(net, per_weight_scores(net, score, batches, cross_entropy))
        assert all(bool(torch.isfinite(v).all() and (v >= 0).all() and v.sum() > 0) for v in s.values())
    keep = uniform_keep(net, s, 0.5)  # the wanda scores
    assert {k: len(v) for k, v in keep.items()} == {k: m.channels // 2 for k, m in net.masks.items()}
    ops = {b: "keep" for b in net.blocks}
    half = net.slim(net.architecture(ops, {k: len(v) for k, v in keep.items()}), keep).eval()
    with torch.no_grad(), net.hard_masked(ops, keep):
        assert torch.allclose(half(x), net(x), atol=1e-5)
    dense = net.dense_architecture().params
    model, arch = prune_to_params(net, scores, 0.7 * dense)
    assert 0.6 * dense < arch.params <= 0.7 * dense
    assert sum(p.numel() for p in model.parameters()) == arch.params
    with pytest.raises(ValueError, match="below the"):
        prune_to_params(net, scores, 0.01 * dense)


def test_manifest_names_stay_inside_the_export_and_its_hf_folder():
    from maskednas.export.manifest import listed_name
    assert listed_name("model.safetensors") and listed_name("hf/config.json")
    for name in ("hf/../x", "hf/a/b", "other/x", "../x", "/etc/passwd", "hf/", "a\\b", "manifest.json"):
        assert not listed_name(name), name
