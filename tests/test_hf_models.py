"""Hugging Face language models in the `model` space (`hf:<model_type>`): heads pruned by
key/value group under grouped-query attention, gated MLPs, layers kept or skipped; exact slimming
and cost, and an export that `transformers` loads on its own."""
from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("transformers")

from benchmarks.support_matrix import randomize
from maskednas.derive import derive, slim
from maskednas.export import load, save_export
from maskednas.export.flops import fvcore_report
from maskednas.export.model_source import ModelSourceError
from maskednas.supernet.user_model import ModelSpaceConfig, UserModel

TOKENS, SEQUENCE = 97, 12
SMALL = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3)
FAMILIES = {  # model type -> config: GQA everywhere (8 query heads on 4 key/value heads, or 4 on 2)
    "llama": dict(SMALL, num_attention_heads=8, num_key_value_heads=4),  # RMSNorm, gated MLP
    "qwen3": dict(SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=16),  # q/k-norm
    "qwen2": dict(SMALL, num_attention_heads=4, num_key_value_heads=2),  # q/k/v biases
    "mistral": dict(SMALL, num_attention_heads=4, num_key_value_heads=2),
}


def language_model(model_type: str, **space) -> UserModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Torch-Pruning's note on the norms' loose weights
        return UserModel(ModelSpaceConfig(source=f"hf:{model_type}", embedding_width=False,
                                          hf_config=FAMILIES[model_type], **space), 1, TOKENS, SEQUENCE)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_heads_and_mlp_widths_are_pruned_exactly_and_costed_as_fvcore_counts(model_type):
    """Every attention is a head group (one member per key/value head with its query heads),
    every MLP a width group; at half the MACs the slimmed model computes what the hard-masked
    one does (random weights, norms and biases), and its MACs (the attention's products
    included) and params are fvcore's count; q_proj keeps the query heads of the kept key/value
    heads."""
    net = language_model(model_type)
    layers = FAMILIES[model_type]["num_hidden_layers"]
    assert sum(k.endswith(":heads") for k in net.masks) == layers
    assert len(net.masks) == 2 * layers and len(net.blocks) == layers
    assert net.dense_architecture().macs == fvcore_report(net.model, net.example)[0]
    randomize(net, torch.Generator().manual_seed(1))
    net.eval()
    derivation = derive(net, 0.5 * net.dense_architecture().macs)
    model = slim(net, derivation).eval()
    x = net.random_input(3, torch.Generator().manual_seed(0))
    with torch.no_grad(), net.hard_masked(derivation.ops, derivation.keep):
        reference = net(x)
        gap = float((model(x) - reference).abs().max())
    assert reference.shape == (3, SEQUENCE, TOKENS)
    assert gap <= 1e-5 * float(reference.abs().max()), gap
    assert (derivation.arch.macs, derivation.arch.params) == fvcore_report(model, net.example)[:2]
    groups = FAMILIES[model_type]["num_attention_heads"] // FAMILIES[model_type]["num_key_value_heads"]
    attentions = [m for n, m in model.named_modules() if n.endswith("self_attn")]
    assert attentions and all(a.q_proj.out_features == groups * a.k_proj.out_features for a in attentions)
    kept = sum(a.k_proj.out_features for a in attentions) // attentions[0].head_dim
    assert kept < layers * FAMILIES[model_type]["num_key_value_heads"]  # some heads went


def test_key_value_head_gate_removes_it_with_its_query_heads():
    """A key/value head whose gate is 0 adds nothing: the output equals the network with the
    output projection's columns of its query heads zeroed; the loss reaches every head mask."""
    net = language_model("llama").eval()
    key = next(k for k in net.heads)
    x = net.random_input(2, torch.Generator().manual_seed(0))
    keep = {k: torch.arange(m.channels) for k, m in net.masks.items()}
    keep[key] = torch.tensor([0, 2, 3])  # key/value head 1 of 4, read by query heads 2 and 3
    with torch.no_grad(), net.hard_masked({b: "keep" for b in net.blocks}, keep):
        masked = net(x)
    o_proj = net.model.get_submodule(net.heads[key].reader)
    head_dim = o_proj.in_features // 8
    with torch.no_grad():
        o_proj.weight[:, 2 * head_dim:4 * head_dim] = 0
        bare = net.model(x)
    assert torch.allclose(masked, bare, atol=1e-6)
    net.train()
    net(x).logsumexp(-1).sum().backward()
    assert all(net.masks[k].logits.grad.abs().sum() > 0 for k in net.heads)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_uniform_widths_export_a_plain_hugging_face_folder(model_type, tmp_path):
    """Every kept layer with half its key/value heads and 24 MLP channels, the middle layer
    skipped: the export rebuilds from the source config at the recorded shapes (no pickle), and
    its hf/ folder loads with `AutoModelForCausalLM.from_pretrained` alone, with the config set
    to the kept widths and layers, computing the same logits; ONNX Runtime agrees too."""
    from transformers import AutoModelForCausalLM

    net = language_model(model_type).eval()
    config = FAMILIES[model_type]
    kv = config["num_key_value_heads"] // 2
    keep = {k: torch.arange(kv) if k in net.heads else torch.arange(24) for k in net.masks}
    ops = {b: "skip" if b.endswith(".1") else "keep" for b in net.blocks}
    arch = net.architecture(ops, {k: len(v) for k, v in keep.items()})
    model = net.slim(arch, keep).eval()
    metrics = save_export(tmp_path / "lm", model, {}, {}, onnx=True)
    x = net.random_input(2, torch.Generator().manual_seed(0))
    loaded = load(tmp_path / "lm").eval()
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "lm" / "hf").eval()
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(loaded(x), expected)
        assert torch.allclose(hf(input_ids=x).logits, expected, atol=1e-6)
    queries = config["num_attention_heads"] // config["num_key_value_heads"] * kv
    assert (hf.config.num_hidden_layers, hf.config.num_attention_heads, hf.config.num_key_value_heads,
            hf.config.intermediate_size) == (2, queries, kv, 24)
    assert metrics["fvcore_flops"] == arch.macs and metrics["onnx_max_abs_diff"] < 1e-4
    assert "hf_folder" not in metrics


def test_layers_of_different_widths_export_without_a_hugging_face_folder(tmp_path):
    """A Hugging Face config holds one MLP width: layers kept at different widths export (and
    load) as pruned-model records only, and the metrics say why there is no hf/ folder."""
    net = language_model("qwen3").eval()
    keep = {k: torch.arange(net.masks[k].channels) for k in net.masks}
    first_mlp = next(k for k in net.masks if k not in net.heads)
    keep[first_mlp] = torch.arange(10)
    arch = net.architecture({b: "keep" for b in net.blocks}, {k: len(v) for k, v in keep.items()})
    metrics = save_export(tmp_path / "lm", net.slim(arch, keep), {}, {}, onnx=False)
    assert not (tmp_path / "lm" / "hf").exists()
    assert "different widths" in metrics["hf_folder"]
    x = net.random_input(1)
    assert load(tmp_path / "lm")(x).shape == (1, SEQUENCE, TOKENS)


@pytest.mark.parametrize("source, hf_config, message", [
    ("hf:lama", {}, "close names: llama"),
    ("hf:llama", {"hidden_sise": 32}, "does not have"),
    ("hf:llama", {"vocab_size": 50}, "the vocabulary is the data's"),
    ("torchvision:resnet18", {"hidden_size": 32}, "configures hf: sources only"),
    ("hf:Llama/../x", {}, "lower-case letters"),
])
def test_bad_hugging_face_sources_are_refused_with_what_is_allowed(source, hf_config, message):
    with pytest.raises(ModelSourceError, match=message):
        UserModel(ModelSpaceConfig(source=source, hf_config=hf_config), 1, TOKENS, SEQUENCE)


def test_an_opaque_attention_is_one_layer_to_torch_pruning():
    """Under grouped-query attention Torch-Pruning's graph sees the attention as one layer: its
    input channels are q, k and v's columns, its output channels o_proj's rows; pruning them
    keeps the other columns and rows as they were."""
    from maskednas.supernet.opaque_attention import attention_pruner, opaque_attentions
    net = language_model("llama")
    attention = next(iter(opaque_attentions(net.model)))
    before = {p: getattr(attention, p).weight.detach().clone() for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    pruner = attention_pruner()
    assert (pruner.get_in_channels(attention), pruner.get_out_channels(attention)) == (32, 32)
    pruner.prune_in_channels(attention, [0, 5])
    pruner.prune_out_channels(attention, [3])
    kept = [i for i in range(32) if i not in (0, 5)]
    for p in ("q_proj", "k_proj", "v_proj"):
        assert torch.equal(getattr(attention, p).weight, before[p][:, kept])
    assert torch.equal(attention.o_proj.weight, before["o_proj"][[i for i in range(32) if i != 3]])
    assert (pruner.get_in_channels(attention), pruner.get_out_channels(attention)) == (30, 31)
