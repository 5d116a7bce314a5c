"""ONNX export with a dynamic batch size, checked against PyTorch with onnxruntime."""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: str | Path) -> None:
    from maskednas.export.hf_models import eager_attention
    model = model.eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), eager_attention(model):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["input"],
                          output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                          dynamo=True, external_data=False, verbose=False)


def onnx_max_abs_diff(model: torch.nn.Module, path: str | Path, x: torch.Tensor) -> float:
    """Largest difference between onnxruntime's and PyTorch's outputs on `x`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = model.eval()(x).detach().cpu()
    theirs = torch.from_numpy(session.run(None, {"input": x.cpu().numpy()})[0])
    return float((ours - theirs).abs().max())
