"""Attention rules: where a multi-head attention's heads live in its projections, so that the
`model` space prunes whole heads.

Torch-Pruning's graph loses channels at the product of two activations (q @ k), so an
attention's channels never form a group there. A rule names, for one attention type, the rows
of each input projection and the columns of the output projection that belong to each head (or,
with grouped-query attention, to each key/value head with the query heads that share it), and
how a module is told its new head count. A head's gate multiplies the output projection's input
columns of that head: a head whose gate is 0 adds nothing, exactly as in the network without it
(the softmax is taken per head). Like layer rules, the most recently registered rule that
applies wins, so a user's attention needs no edit of the library:

    >>> from maskednas.ops.attention_rules import attention_rule_for
    >>> from timm.models.vision_transformer import Attention
    >>> rule = attention_rule_for(Attention(64, num_heads=4))
    >>> rule.heads(Attention(64, num_heads=4)), rule.rows(Attention(64, num_heads=4))["qkv"].shape
    (4, torch.Size([4, 48]))
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from maskednas.common import Registry

ATTENTION_RULES = Registry("attention rule")


@dataclass(frozen=True)
class AttentionRule:
    """Where one attention type's heads live (fields below).

    >>> from timm.models.vision_transformer import Attention
    >>> from maskednas import attention_rule_for
    >>> attn = Attention(8, num_heads=2)  # 2 heads of 4: qkv's 24 rows, proj's 8 columns
    >>> rule = attention_rule_for(attn)
    >>> rule.rows(attn)["qkv"][1].tolist(), rule.columns(attn)
    ([4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23], ('proj', tensor([[0, 1, 2, 3],
            [4, 5, 6, 7]])))
    """
    layer_type: type
    # the number of prunable heads (key/value heads under grouped-query attention)
    heads: Callable[[nn.Module], int]
    # child linear layer -> its output rows of each head, [heads, rows per head] (an input
    # projection: fused qkv, or q, k and v each)
    rows: Callable[[nn.Module], dict[str, torch.Tensor]]
    # (child linear layer, its input columns of each head [heads, columns per head]): the output
    # projection
    columns: Callable[[nn.Module], tuple[str, torch.Tensor]]
    # sets the module's head count (and what follows from it) after its layers are sliced
    resize: Callable[[nn.Module, int], None]
    # the plain int attributes `resize` sets (rebuilt from the export's record)
    width_attributes: tuple[str, ...] = ()
    # why this module's heads cannot be pruned (None: they can)
    unsupported: Callable[[nn.Module], str | None] = lambda m: None
    # whether the rule covers this instance (a subclass with its own forward may not)
    applies: Callable[[nn.Module], bool] = lambda m: True
    # Torch-Pruning's graph sees the module as one layer (supernet/opaque_attention.py): for
    # attentions its index mapping cannot trace (grouped-query attention)
    opaque: bool = False


def register_attention_rule(name: str, rule: AttentionRule) -> AttentionRule:
    """Register `rule` under `name`; it takes precedence over rules registered before it.

    >>> import torch
    >>> from torch import nn
    >>> from maskednas import AttentionRule, attention_rule_for, register_attention_rule
    >>> class SelfAttention(nn.Module):  # q, k, v and out projections, `heads` heads
    ...     def __init__(self, dim, heads):
    ...         super().__init__()
    ...         self.heads, self.head_dim = heads, dim // heads
    ...         self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
    >>> per_head = lambda m: torch.arange(m.heads * m.head_dim).view(m.heads, m.head_dim)
    >>> def resize(m, heads):
    ...     m.heads = heads
    >>> rule = register_attention_rule("self_attention", AttentionRule(
    ...     SelfAttention, heads=lambda m: m.heads,
    ...     rows=lambda m: {"q": per_head(m), "k": per_head(m), "v": per_head(m)},
    ...     columns=lambda m: ("out", per_head(m)), resize=resize, width_attributes=("heads",)))
    >>> attention_rule_for(SelfAttention(16, 4)) is rule
    True
    >>> from maskednas.ops.attention_rules import ATTENTION_RULES
    >>> del ATTENTION_RULES._obj_map["self_attention"]
    """
    if name in ATTENTION_RULES.names():
        raise KeyError(f"an attention rule named {name!r} is registered already")
    return ATTENTION_RULES.add(name, rule)


def attention_rule_for(module: nn.Module) -> AttentionRule | None:
    """The most recently registered attention rule for `module` (None: no rule covers it).

    >>> from torch import nn
    >>> from maskednas import attention_rule_for
    >>> attention_rule_for(nn.Linear(4, 4)) is None
    True
    """
    return ATTENTION_RULES.newest_for(module)


def attention_width_attributes() -> tuple[str, ...]:
    return tuple(a for n in ATTENTION_RULES.names() for a in ATTENTION_RULES.get(n).width_attributes)


def fused_qkv_rows(heads: int, head_dim: int) -> torch.Tensor:
    """Rows of a fused qkv projection (q, k, v stacked, each head by head) per head: [heads, 3 *
    head_dim], each head's q rows, then its k rows, then its v rows."""
    per_head = torch.arange(heads * head_dim).view(heads, head_dim)
    width = heads * head_dim
    return torch.cat([per_head, per_head + width, per_head + 2 * width], dim=1)


def _register_timm() -> None:
    from timm.models.vision_transformer import Attention

    def unsupported(m) -> str | None:
        if not isinstance(m.norm, nn.Identity) or getattr(m, "gate", None) is not None:
            return "a norm or gate over all heads' outputs (scale_norm, gated attention)"
        if not isinstance(m.qkv, nn.Linear) or not isinstance(m.proj, nn.Linear):
            return "its projections are not nn.Linear layers"
        return None

    def resize(m, heads: int) -> None:
        m.num_heads, m.attn_dim = heads, heads * m.head_dim

    register_attention_rule("timm_attention", AttentionRule(
        Attention, heads=lambda m: m.num_heads,
        rows=lambda m: {"qkv": fused_qkv_rows(m.num_heads, m.head_dim)},
        columns=lambda m: ("proj", torch.arange(m.attn_dim).view(m.num_heads, m.head_dim)),
        resize=resize, width_attributes=("num_heads", "attn_dim"), unsupported=unsupported,
        applies=lambda m: type(m).forward is Attention.forward))


_register_timm()

# Hugging Face attentions with q_proj, k_proj, v_proj and o_proj whose forward takes the head count
# from q_proj's width (`view(..., -1, head_dim)`) and repeats each key/value head for
# `num_key_value_groups` query heads; q/k-norm (Qwen3) normalises each head over head_dim with
# weights shared by all heads, so it is untouched. Matched by class name (tested ones only), so
# that `transformers` is imported only by users of hf: sources.
HF_GROUPED_QUERY = ("LlamaAttention", "MistralAttention", "Qwen2Attention", "Qwen3Attention")


def _hf_grouped_query(m: nn.Module) -> bool:
    return (type(m).__name__ in HF_GROUPED_QUERY and type(m).__module__.startswith("transformers.")
            and all(isinstance(getattr(m, p, None), nn.Linear) for p in ("q_proj", "k_proj", "v_proj", "o_proj")))


def grouped_query_rows(kv_heads: int, queries_per_kv: int, head_dim: int) -> dict[str, torch.Tensor]:
    """Rows of q_proj, k_proj and v_proj per key/value head: its own k and v rows and the rows
    of the `queries_per_kv` query heads that read it (query head h reads key/value head h //
    queries_per_kv, as `repeat_kv` repeats them)."""
    kv = torch.arange(kv_heads * head_dim).view(kv_heads, head_dim)
    return {"q_proj": torch.arange(kv_heads * queries_per_kv * head_dim).view(kv_heads, -1),
            "k_proj": kv, "v_proj": kv}


def _register_hf_grouped_query() -> None:
    kv_heads = lambda m: m.k_proj.out_features // m.head_dim
    register_attention_rule("hf_grouped_query_attention", AttentionRule(
        nn.Module, heads=kv_heads,
        rows=lambda m: grouped_query_rows(kv_heads(m), m.num_key_value_groups, m.head_dim),
        columns=lambda m: ("o_proj", torch.arange(m.o_proj.in_features).view(kv_heads(m), -1)),
        resize=lambda m, heads: None, applies=_hf_grouped_query, opaque=True))


_register_hf_grouped_query()


@dataclass(frozen=True)
class BranchRule:
    """A transformer block `x = x + branch(x)` twice (attention, then MLP) whose branches are
    kept or skipped each on its own: branch child -> the children that run only for it (its
    norm, its layer scale), removed with it."""
    layer_type: type
    branches: dict[str, tuple[str, ...]]
    # whether the rule covers this instance (a subclass with another forward may not add its
    # branches to the stream)
    applies: Callable[[nn.Module], bool] = lambda m: True


BRANCH_RULES = Registry("branch rule")


def branch_rule_for(module: nn.Module) -> BranchRule | None:
    return BRANCH_RULES.newest_for(module)


def _register_timm_block() -> None:
    from timm.models.vision_transformer import Block
    BRANCH_RULES.add("timm_block", BranchRule(
        Block, {"attn": ("norm1", "ls1", "drop_path1"), "mlp": ("norm2", "ls2", "drop_path2")},
        applies=lambda m: type(m).forward is Block.forward))


_register_timm_block()
