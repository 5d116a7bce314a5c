"""Hugging Face language models as `model` sources: `hf:<model_type>` built by `transformers`
from a config (random weights; the architecture's fields in `model.hf_config`, e.g.
hidden_size, num_hidden_layers, num_key_value_heads), the vocabulary sized to the data's
tokens. Heads are searched where an attention rule covers the model's attention (llama,
mistral, qwen2, qwen3: ops/attention_rules.py); other causal language models (gpt2, ...) build,
but only what Torch-Pruning's graph and the layer rules follow is pruned.

`transformers` is an optional extra (`pip install maskednas[hf]`). A causal language model is
wrapped so that its forward maps token ids [batch, sequence] to logits [batch, sequence,
vocabulary], as every other `model` source maps images to logits; `save_pretrained` writes the
plain Hugging Face folder of the (pruned) model inside.
"""
from __future__ import annotations

import contextlib
import re

import torch
from torch import nn

from maskednas.export.model_source import ModelSourceError

_MODEL_TYPE = re.compile(r"^[a-z][a-z0-9_\-]*$")
# config fields set from the data, never from model.hf_config
_SET_HERE = ("vocab_size",)


class HFSourceError(ModelSourceError):
    """An `hf:` source or config that cannot be built, with what is allowed."""


def is_language_model(source: str) -> bool:
    """Whether a model source names a Hugging Face language model (token ids in, not images)."""
    return source.startswith("hf:")


def transformers_module():
    try:
        import transformers
    except ImportError as e:
        raise HFSourceError("hf: sources need the `transformers` package: pip install "
                            "'maskednas[hf]'") from e
    return transformers


def check_model_type(name: str) -> None:
    if not _MODEL_TYPE.fullmatch(name):
        raise HFSourceError(f"hf:{name}: a Hugging Face model type is lower-case letters, digits, "
                            f"'_' and '-' (e.g. hf:llama, hf:qwen3, hf:gpt2)")


class CausalLanguageModel(nn.Module):
    """Token ids -> next-token logits of a Hugging Face causal language model (`self.hf`)."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=ids, use_cache=False).logits

    def save_pretrained(self, folder, **kwargs) -> None:
        self.hf.save_pretrained(folder, **kwargs)


def build_hf(model_type: str, vocab_size: int, config: dict | None = None) -> CausalLanguageModel:
    """A causal language model of `model_type` with random weights, `vocab_size` tokens and the
    architecture fields of `config`."""
    check_model_type(model_type)
    transformers = transformers_module()
    config = dict(config or {})
    fixed = [k for k in _SET_HERE if k in config]
    if fixed:
        raise HFSourceError(f"model.hf_config sets {fixed}: the vocabulary is the data's "
                            f"(its tokens); leave it out")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    if model_type not in CONFIG_MAPPING:
        import difflib
        close = difflib.get_close_matches(model_type, list(CONFIG_MAPPING.keys()), n=5)
        raise HFSourceError(f"transformers has no model type {model_type!r}" +
                            (f"; close names: {', '.join(close)}" if close else ""))
    defaults = CONFIG_MAPPING[model_type]()
    unknown = [k for k in config if not hasattr(defaults, k)]
    if unknown:
        raise HFSourceError(f"model.hf_config names {unknown}, which {model_type}'s config does not "
                            f"have (it has e.g. hidden_size, num_hidden_layers, num_attention_heads)")
    special = {k: None for k in ("bos_token_id", "eos_token_id", "pad_token_id")
               if isinstance(getattr(defaults, k, None), int) and getattr(defaults, k) >= vocab_size
               and k not in config}
    hf_config = transformers.AutoConfig.for_model(model_type, vocab_size=vocab_size,
                                                  **{**special, **config})
    if model_type == "bert":
        hf_config.is_decoder = True  # a causal language model of BERT's layers
    try:
        hf = transformers.AutoModelForCausalLM.from_config(hf_config)
    except ValueError as e:
        raise HFSourceError(f"hf:{model_type} has no causal language model in transformers: "
                            f"{str(e).splitlines()[0]}") from e
    return CausalLanguageModel(hf)


def token_example(sequence_length: int, batch: int = 1, vocab_size: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Token ids [batch, sequence_length]: zeros, or uniformly random below `vocab_size`."""
    if vocab_size is None:
        return torch.zeros(batch, sequence_length, dtype=torch.long)
    return torch.randint(0, vocab_size, (batch, sequence_length), generator=generator)


def example_input(arch, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A batch for the network an architecture record describes: token ids for a language model
    (`arch.input_size` of them), standard normal images otherwise."""
    if is_language_model(getattr(arch, "source", "")):
        return token_example(arch.input_size, batch, arch.num_classes, generator)
    return torch.randn(batch, arch.in_channels, arch.input_size, arch.input_size, generator=generator)


def plain_model(model: nn.Module) -> tuple[nn.Module | None, str]:
    """The pruned language model inside `model` as a plain Hugging Face model (its config set to
    the kept head counts, MLP width and layers) that `AutoModelForCausalLM.from_pretrained`
    loads without this package, or None and why it cannot be one: a Hugging Face config holds
    one width per field, so every kept layer must have the same."""
    if not isinstance(model, CausalLanguageModel):
        return None, "not a Hugging Face language model"
    import copy

    from maskednas.export.pruned_model import SkippedBlock, ZeroBranch
    if not isinstance(getattr(getattr(model.hf, "model", None), "layers", None), nn.ModuleList):
        return None, f"{type(model.hf).__name__} is not a decoder of model.layers (LLaMA-like)"
    if any(isinstance(m, ZeroBranch) for m in model.hf.modules()):
        return None, "an attention or MLP branch is removed in some layer but not in others"
    shapes = {(lay.self_attn.q_proj.out_features, lay.self_attn.k_proj.out_features,
               lay.mlp.up_proj.out_features) for lay in model.hf.model.layers
              if not isinstance(lay, SkippedBlock)}
    if len(shapes) != 1:
        return None, f"its layers keep different widths (q, k/v rows, MLP width): {sorted(shapes)}"
    (q_rows, kv_rows, mlp), = shapes
    hf = copy.deepcopy(model.hf)  # checked first: the copy is made only for a folder to write
    config = hf.config
    layers = hf.model.layers
    kept = [layer for layer in layers if not isinstance(layer, SkippedBlock)]
    head_dim = kept[0].self_attn.head_dim
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        config.layer_types = [t for t, lay in zip(layer_types, layers) if not isinstance(lay, SkippedBlock)]
    hf.model.layers = nn.ModuleList(kept)
    for index, layer in enumerate(kept):  # the key/value cache is indexed by layer
        layer.self_attn.layer_idx = index
    config.num_hidden_layers = len(kept)
    config.num_attention_heads, config.num_key_value_heads = q_rows // head_dim, kv_rows // head_dim
    config.intermediate_size = mlp
    config.head_dim = head_dim  # else some configs derive it from hidden_size // heads (Qwen2)
    return hf, ""


@contextlib.contextmanager
def eager_attention(model: nn.Module):
    """A Hugging Face model inside `model` runs its attention eagerly while the context lasts:
    torch.export (the ONNX exporter) fails on transformers' SDPA path with a dynamic batch."""
    if not isinstance(model, CausalLanguageModel):
        yield
        return
    before = model.hf.config._attn_implementation
    model.hf.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.hf.set_attn_implementation(before)
