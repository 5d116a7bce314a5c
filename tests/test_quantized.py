"""fp16 and int8 ONNX exports: accuracy and size against fp32, loading with onnxruntime and
numpy alone, corruption named, bad precisions refused."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from maskednas.datasource import load_dataset
from maskednas.export import ExportError, load_onnx, read_metrics
from maskednas.export.folder import MANIFEST
from maskednas.pipeline import ConfigError, load_config, run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """The default digits config (space, widths, target), fewer epochs to keep CI short."""
    out = tmp_path_factory.mktemp("quantized")
    cfg = load_config(ROOT / "configs" / "digits.yaml",
                      ["search.epochs=8", "search.warmup_epochs=2", "finetune.epochs=10",
                       "export.quantize=[fp16,int8]"])
    metrics = run(cfg, out / "run", report=lambda _: None)
    return out / "run" / "export", metrics


def test_artefacts_keep_accuracy_and_shrink(quantized):
    folder, metrics = quantized
    onnx = metrics["onnx"]
    assert set(onnx) == {"fp32", "fp16", "int8"} and read_metrics(folder)["onnx"] == onnx
    assert onnx["fp32"]["test_acc"] == pytest.approx(metrics["test_acc"], abs=1e-9)
    assert abs(onnx["int8"]["test_acc"] - onnx["fp32"]["test_acc"]) <= 0.01
    assert abs(onnx["fp16"]["test_acc"] - onnx["fp32"]["test_acc"]) <= 0.002
    # fp16 halves the weights; int8 quarters them, but per-channel scales, int32 biases and the
    # QDQ nodes are a fixed cost that a small model does not amortise (README: 1.5-2.3x)
    assert onnx["fp32"]["bytes"] / onnx["fp16"]["bytes"] >= 1.6
    assert onnx["fp32"]["bytes"] / onnx["int8"]["bytes"] >= 1.8
    for p in onnx.values():
        assert p["latency_ms_b1"] > 0 and p["latency_ms_b64"] > 0
    manifest = json.loads((folder / MANIFEST).read_text())
    assert {"model.onnx", "model.fp16.onnx", "model.int8.onnx"} <= manifest.keys()


def test_artefacts_run_with_onnxruntime_and_numpy_alone(quantized, tmp_path):
    folder, metrics = quantized
    arch = json.loads((folder / "arch.json").read_text())
    images = load_dataset("digits").x_test[:64].numpy().astype(np.float32) / 255
    shape = (1, -1, 1, 1)
    x = (images - np.reshape(arch["mean"], shape)) / np.reshape(arch["std"], shape)
    np.save(tmp_path / "x.npy", x.astype(np.float32))  # test images, normalised as arch.json says
    script = f"""
import sys
sys.modules["torch"] = None  # importing torch would fail: it is not needed
import numpy as np
from maskednas.export import load_onnx
x = np.load({str(tmp_path / 'x.npy')!r})
outs = {{p: load_onnx({str(folder)!r}, p).run(None, {{"input": x}})[0] for p in ("fp32", "fp16", "int8")}}
np.savez({str(tmp_path / 'y.npz')!r}, **outs)
assert not [m for m, mod in sys.modules.items()
            if m.startswith(("torch", "maskednas.supernet", "maskednas.search", "maskednas.pipeline"))
            and mod is not None]
"""
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True)
    outs = np.load(tmp_path / "y.npz")
    assert outs["fp32"].shape == (64, arch["num_classes"]) and outs["fp16"].dtype == np.float32
    assert np.abs(outs["fp16"] - outs["fp32"]).max() <= 0.01 * np.abs(outs["fp32"]).max()
    agree = (outs["int8"].argmax(1) == outs["fp32"].argmax(1)).mean()
    assert agree >= 0.95, agree


def test_a_corrupted_quantized_file_is_named(quantized, tmp_path):
    import shutil
    folder = tmp_path / "export"
    shutil.copytree(quantized[0], folder)
    data = bytearray((folder / "model.int8.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.int8.onnx").write_bytes(bytes(data))
    with pytest.raises(ExportError, match="model.int8.onnx does not match its sha256"):
        load_onnx(folder, "int8")
    load_onnx(folder, "fp16")  # the others still load: each load checks the files it reads


def test_unknown_and_missing_precisions_are_named(quantized, tmp_path):
    with pytest.raises(ConfigError, match=r"export.quantize must list precisions from fp16, int8, got \['int4'\]"):
        load_config(None, ["export.quantize=[int4]"])
    with pytest.raises(ExportError, match="unknown precision 'int4'; precisions are fp32, fp16, int8"):
        load_onnx(quantized[0], "int4")
    cfg = load_config(None, ["search.epochs=1", "search.warmup_epochs=0", "finetune.epochs=0",
                             "data.batch_size=256"])
    run(cfg, tmp_path / "plain", report=lambda _: None)
    with pytest.raises(ExportError, match="has no int8 artefact .*it has fp32"):
        load_onnx(tmp_path / "plain" / "export", "int8")
