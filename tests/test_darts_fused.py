"""The fused schedule of the DARTS search cell (shared per-state work, one contraction per node)
computes what the reference per-edge schedule computes, with fewer dispatched ops."""
import pytest
import torch

from maskednas.derive import derive
from maskednas.search.op_count import OpCounter
from test_darts import randomize_darts, tiny_darts

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))]


def twin_supernets(device, **kw):
    """The same supernet (same weights, alpha, masks, BN statistics) in both schedules."""
    torch.manual_seed(0)
    per_edge = tiny_darts(fused=False, **kw)
    randomize_darts(per_edge)
    with torch.no_grad():
        for alpha in per_edge.alphas.values():
            alpha.normal_()
    fused = tiny_darts(fused=True, **kw)
    fused.load_state_dict(per_edge.state_dict())
    fused.eval()
    return per_edge.to(device), fused.to(device)


def loss_and_grads(net, x, y):
    net.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in net.named_parameters()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_schedule_gives_the_per_edge_loss_and_gradients(device, channels_last):
    per_edge, fused = twin_supernets(device, aux_skip=0.5)
    x = torch.randn(8, 3, 8, 8, device=device)
    y = torch.randint(0, 5, (8,), device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        per_edge, fused = (n.to(memory_format=torch.channels_last) for n in (per_edge, fused))
    per_edge.train(), fused.train()
    loss_ref, grads_ref = loss_and_grads(per_edge, x, y)
    loss, grads = loss_and_grads(fused, x, y)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=1e-6)
    assert grads.keys() == grads_ref.keys()
    for name, g in grads.items():
        assert (g is None) == (grads_ref[name] is None), name
        if g is not None:  # weights, alpha and mask logits alike
            scale = float(grads_ref[name].abs().max()) + 1e-12
            torch.testing.assert_close(g / scale, grads_ref[name] / scale, rtol=0, atol=2e-5,
                                       msg=lambda m, name=name: f"{name}: {m}")
    for (name, buf), ref in zip(fused.named_buffers(), per_edge.buffers()):
        torch.testing.assert_close(buf, ref, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_fused_schedule_runs_only_the_derived_cells_once_fixed():
    per_edge, fused = twin_supernets("cpu")
    d = derive(per_edge)
    for net in (per_edge, fused):
        net.hard_mask(d.ops, d.keep)
    assert all(len(pairs) == 2 for cell in fused.cells for pairs in cell.terms)  # 2 edges, 1 op each
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), per_edge(x), rtol=1e-5, atol=1e-6)
    fused.soft_mask()
    assert all(len(pairs) == (i + 2) * 7 for cell in fused.cells for i, pairs in enumerate(cell.terms))


def test_fused_schedule_dispatches_far_fewer_ops():
    per_edge, fused = twin_supernets("cpu")
    x, y = torch.randn(2, 3, 8, 8), torch.randint(0, 5, (2,))
    counts = []
    for net in (per_edge, fused):
        net.train()
        with OpCounter() as counter:
            loss_and_grads(net, x, y)
        counts.append(counter.ops)
    assert counts[1] < 0.65 * counts[0], counts


def test_a_node_of_zero_ops_gives_zeros_in_both_schedules():
    per_edge, fused = twin_supernets("cpu")
    d = derive(per_edge)
    ops = {k: list(v) for k, v in d.ops.items()}
    ops["normal"][0] = ("zero", ops["normal"][0][1])  # node 0: both edges 'zero'
    ops["normal"][1] = ("zero", ops["normal"][1][1])
    for net in (per_edge, fused):
        net.hard_mask(ops, d.keep)
    assert fused.cells[0].terms[0] == []
    cell = fused.cells[0]
    outputs = []
    cell.register_forward_hook(lambda m, i, out: outputs.append(out[:, :cell.channels]))
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), per_edge(x), rtol=1e-5, atol=1e-6)
    assert not outputs[0].any()  # node 0 of cell 0 is all zeros
