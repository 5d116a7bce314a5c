"""Running an export's ONNX artefacts with ONNX Runtime: with onnxruntime and numpy alone (no
torch), for users who deploy them; and each artefact's accuracy and latency, measured at export.

    session = export.load_onnx("runs/x/export", precision="int8")
    logits = session.run(None, {"input": x})[0]   # x: float32 NCHW, normalised as arch.json says
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from maskednas.export.manifest import ARCH, ONNX, ExportError, verify

PRECISIONS = {"fp32": ONNX, "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


def load_onnx(folder: str | Path, precision: str = "fp32"):
    """An ONNX Runtime CPU session of the export's model at `precision`, after checking the
    folder against its manifest (a truncated or modified artefact raises ExportError).

    >>> import tempfile
    >>> import maskednas
    >>> from maskednas.export.folder import save_export
    >>> from maskednas import Architecture, build
    >>> from maskednas.export.architecture import LayerChoice
    >>> arch = Architecture(in_channels=1, input_size=8, num_classes=10, stem_channels=4,
    ...                     layers=(LayerChoice("conv_3x3", 4, 8, 2, False, kernel=3),))
    >>> folder = tempfile.mkdtemp() + "/export"
    >>> _ = save_export(folder, maskednas.build(arch), {}, {"test_acc": 0.5})
    >>> import numpy as np
    >>> session = maskednas.load_onnx(folder)
    >>> session.run(None, {"input": np.zeros((3, 1, 8, 8), np.float32)})[0].shape
    (3, 10)
    """

    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; precisions are {', '.join(PRECISIONS)}")
    name = PRECISIONS[precision]
    manifest = verify(folder, [ARCH, name])
    if name not in manifest:
        have = [p for p, n in PRECISIONS.items() if n in manifest]
        raise ExportError(f"{folder} has no {precision} artefact ({name}); it has {', '.join(have)} "
                          f"(export with export.quantize=[{precision}])")
    return session(Path(folder) / name)


def session(path: str | Path, spinning: bool = True):
    """An ONNX Runtime CPU session; `spinning=False` for sessions timed in alternation (an idle
    session's threads would busy-wait on the cores the next one runs on)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for malformed files
        raise ExportError(f"{path} is not a loadable ONNX model: {e}") from e


def accuracy(sess, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    """Top-1 accuracy of a session on normalised float32 NCHW images."""
    logits = np.concatenate([sess.run(None, {"input": x[i:i + batch]})[0]
                             for i in range(0, len(x), batch)])
    return float((logits.argmax(1) == y).mean())


def report(folder: str | Path, precisions: list[str], x: np.ndarray, y: np.ndarray) -> dict:
    """Per artefact: test accuracy, size on disk and ONNX Runtime CPU latency at batch 1 and 64
    (timed as the PyTorch models are; this needs torch, loading an artefact does not)."""
    from maskednas.export.latency import alternating_ms

    folder = Path(folder)
    sessions = {p: session(folder / PRECISIONS[p], spinning=False) for p in precisions}
    out = {p: {"test_acc": accuracy(s, x, y), "bytes": (folder / PRECISIONS[p]).stat().st_size}
           for p, s in sessions.items()}
    for batch in (1, 64):
        batch_x = np.random.default_rng(0).standard_normal((batch, *x.shape[1:]), dtype=np.float32)
        runs = {p: (lambda s=s: s.run(None, {"input": batch_x})) for p, s in sessions.items()}
        for p, ms in alternating_ms(runs).items():
            out[p][f"latency_ms_b{batch}"] = ms
    return out
