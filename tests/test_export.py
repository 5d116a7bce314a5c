"""Export folder: reload without the supernet, ONNX agreement, fvcore equality, corruption."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import randomize, tiny_space
from maskednas.export import ExportError, load, read_metrics, save_export
from maskednas.derive import derive
from maskednas.export.folder import ARCH, MANIFEST, WEIGHTS, verify
from maskednas.derive.slim import slim
from maskednas.supernet import MacroSupernet, dense_cost

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """One export (ONNX takes seconds) shared by the module; tests get their own copy."""
    torch.manual_seed(0)
    net = MacroSupernet(tiny_space(), in_channels=1, num_classes=10, input_size=8)
    randomize(net)
    d = derive(net, 0.4 * float(dense_cost(net).macs))
    model = slim(net, d).eval()
    folder = tmp_path_factory.mktemp("pristine") / "export"
    metrics = save_export(folder, model, {"seed": 0}, {"test_acc": 0.5})
    return folder, model, d, metrics


@pytest.fixture
def exported(pristine, tmp_path):
    folder, model, d, metrics = pristine
    copy = tmp_path / "export"
    shutil.copytree(folder, copy)
    return copy, model, d, metrics


def test_export_folder_holds_every_artifact(exported):
    folder, _, d, metrics = exported
    names = {p.name for p in folder.iterdir()}
    assert names == {"arch.json", "model.safetensors", "config.yaml", "metrics.json",
                     "model.onnx", "flops.txt", "manifest.json"}
    assert metrics == read_metrics(folder)
    assert metrics["fvcore_flops"] == d.arch.cost().macs  # analytic == fvcore, exactly
    assert metrics["fvcore_params"] == d.arch.cost().params
    assert metrics["onnx_max_abs_diff"] < 1e-5
    assert "stem" in (folder / "flops.txt").read_text()
    assert not list(folder.parent.glob(".export.*"))  # no temporary folder left behind


def test_reload_in_a_fresh_process_without_supernet_code(exported, tmp_path):
    folder, model, _, _ = exported
    x = torch.randn(5, 1, 8, 8)
    torch.save(x, tmp_path / "x.pt")
    script = f"""
import sys, torch
from maskednas import export
model = export.load({str(folder)!r})
torch.save(model(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})
leaked = sorted(m for m in sys.modules if m.startswith(('maskednas.supernet', 'maskednas.search', 'maskednas.pipeline', 'maskednas.cli')))
assert not leaked, leaked
"""
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True)
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "y.pt"), model(x))


def test_onnx_output_matches_pytorch(exported):
    import onnxruntime
    folder, model, _, _ = exported
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(7, 1, 8, 8)  # another batch size than the export example: dynamic batch
    out = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(out), model(x), atol=1e-5)


def test_truncated_weights_are_named(exported):
    folder = exported[0]
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match=r"model\.safetensors has \d+ bytes, expected \d+"):
        load(folder)


def test_modified_architecture_is_detected(exported):
    folder = exported[0]
    text = (folder / ARCH).read_text()
    (folder / ARCH).write_text(text.replace('"num_classes": 10', '"num_classes": 11'))
    with pytest.raises(ExportError, match="arch.json"):
        load(folder)


def test_missing_manifest_and_missing_folder(exported, tmp_path):
    folder = exported[0]
    with pytest.raises(ExportError, match="does not exist"):
        load(tmp_path / "nowhere")
    (folder / MANIFEST).unlink()
    with pytest.raises(ExportError, match="manifest.json is missing"):
        load(folder)


def test_weights_that_do_not_fit_the_architecture(exported, tiny_net, tmp_path):
    folder = exported[0]
    with torch.no_grad():
        for mask in tiny_net.masks.values():
            mask.logits.fill_(5.0)  # keep every channel: wider than the exported model
    other = slim(tiny_net, derive(tiny_net))
    save_export(tmp_path / "other", other, {}, {}, onnx=False)
    (folder / WEIGHTS).write_bytes((tmp_path / "other" / WEIGHTS).read_bytes())
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest.pop(WEIGHTS)  # pretend the manifest agrees, to reach the shape check
    manifest[WEIGHTS] = verify(tmp_path / "other")[WEIGHTS]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="does not match arch.json"):
        load(folder)


def test_re_export_replaces_the_folder_whole(exported, tiny_net):
    folder, _, _, _ = exported
    (folder / "stale.txt").write_text("from an earlier export")
    model = slim(tiny_net, derive(tiny_net))
    save_export(folder, model, {}, {"test_acc": 0.9}, onnx=False)
    assert not (folder / "stale.txt").exists() and not (folder / "model.onnx").exists()
    assert read_metrics(folder)["test_acc"] == 0.9
    load(folder)


def test_darts_cells_export_through_onnx_and_agree(tmp_path):
    """FactorizedReduce's strided slice and the cell concatenations through the ONNX exporter."""
    import onnxruntime
    from test_darts import DARTS_V2, randomize_darts, set_genotype_alphas, tiny_darts

    torch.manual_seed(0)
    net = tiny_darts()
    randomize_darts(net)
    reduce = [("skip_connect", 0), *DARTS_V2["reduce"][1:]]  # a stride-2 skip: FactorizedReduce
    set_genotype_alphas(net, {"normal": DARTS_V2["normal"], "reduce": reduce})
    model = slim(net, derive(net)).eval()
    assert any(e.op == "skip_connect" and e.stride == 2 for c in model.arch.cells for e in c.edges)
    assert any(c.reduce_in0 for c in model.arch.cells)  # and as the input of a cell after a reduction
    metrics = save_export(tmp_path / "export", model, {}, {})
    assert metrics["onnx_max_abs_diff"] < 1e-5
    session = onnxruntime.InferenceSession(str(tmp_path / "export" / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(session.run(None, {"input": x.numpy()})[0]),
                                   model(x), rtol=0, atol=1e-5)


def test_an_onnx_graph_that_disagrees_fails_the_export_and_writes_nothing(exported, monkeypatch):
    import maskednas.export.onnx_export as onnx_export

    folder, model, _, _ = exported
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(onnx_export, "onnx_max_abs_diff", lambda *a: 0.5)
    with pytest.raises(ExportError, match="ONNX Runtime's outputs differ from PyTorch's by 0.5"):
        save_export(folder, model, {}, {"test_acc": 0.1})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the old export stands
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".export")] == []


def test_an_export_whose_macs_fvcore_disputes_writes_nothing(exported, monkeypatch, tmp_path):
    """The MACs check comes before the folder is swapped in: a failing export leaves no folder."""
    import maskednas.export.flops as flops
    _, model, _, _ = exported
    real = flops.fvcore_report
    monkeypatch.setattr(flops, "fvcore_report", lambda m, x: (real(m, x)[0] + 1, *real(m, x)[1:]))
    with pytest.raises(ExportError, match="the architecture record counts .* MACs but fvcore counts"):
        save_export(tmp_path / "disputed", model, {}, {"test_acc": 0.1}, onnx=False)
    assert [p.name for p in tmp_path.iterdir() if "disputed" in p.name] == []  # no folder, no temporary
