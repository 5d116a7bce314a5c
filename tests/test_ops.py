"""Every registered op: forward/backward with masks, exact cost formulas, registry errors."""
import pytest
import torch

from maskednas.export.flops import fvcore_report
from maskednas.ops import OPS, ChannelMask, apply_gate, build_op, get_op


def op_cases():
    for name in OPS.names():
        for stride in (1, 2):
            for tied in ((False, True) if stride == 1 else (False,)):
                yield pytest.param(name, stride, tied, id=f"{name}-s{stride}-{'tied' if tied else 'untied'}")


@pytest.mark.parametrize("name,stride,tied", list(op_cases()))
def test_op_forward_backward_with_masked_channels(name, stride, tied):
    torch.manual_seed(0)
    c_in, c_out = 6, (6 if tied else 10)
    op = build_op(name, c_in, c_out, stride, tied=tied)
    spec = get_op(name)
    hidden_mask = ChannelMask(spec.default_hidden(c_in)) if spec.has_hidden else None
    out_mask = ChannelMask(c_out)
    with torch.no_grad():  # prune about half of every group
        for m in filter(None, (hidden_mask, out_mask)):
            m.logits.copy_(torch.linspace(-2, 2, m.channels))
    x = torch.randn(3, c_in, 7, 7, requires_grad=True)
    y = apply_gate(op(x, hidden_mask() if hidden_mask else None), out_mask())
    assert y.shape == (3, c_out, 4 if stride == 2 else 7, 4 if stride == 2 else 7)
    y.square().mean().backward()
    assert out_mask.logits.grad is not None and torch.isfinite(out_mask.logits.grad).all()
    if name != "zero":
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        assert out_mask.logits.grad.abs().sum() > 0
    if hidden_mask is not None:
        assert hidden_mask.logits.grad.abs().sum() > 0  # the inner mask gets a gradient


@pytest.mark.parametrize("name,stride,tied", list(op_cases()))
def test_op_cost_formula_equals_fvcore(name, stride, tied):
    c_in, c_out, size = 6, (6 if tied else 10), 7
    spec = get_op(name)
    hidden = 5 if spec.has_hidden else None
    op = build_op(name, c_in, c_out, stride, hidden=hidden, tied=tied)
    flops, params, _ = fvcore_report(op, torch.randn(1, c_in, size, size))
    cost = spec.cost(c_in, c_out, stride, size, size, hidden=hidden, tied=tied)
    assert (cost.macs, cost.params) == (flops, params)


def test_hand_counted_macs_of_a_conv():
    # ReLU -> conv 3x3 (4 -> 8, stride 2) -> BN on 8x8: 9*4*8*4*4 MACs + BN's 2 per output element
    cost = get_op("conv_3x3").cost(4, 8, 2, 8, 8)
    assert cost.macs == 9 * 4 * 8 * 16 + 2 * 8 * 16
    assert cost.params == 9 * 4 * 8 + 2 * 8


def test_unknown_op_lists_registered_ones():
    with pytest.raises(KeyError) as e:
        build_op("conv_7x7", 4, 4, 1)
    for name in ("conv_3x3", "sep_conv_5x5", "mbconv_k5_e6", "zero", "skip_connect"):
        assert name in str(e.value)


def test_bad_stride_is_rejected():
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        build_op("conv_3x3", 4, 4, 3)
