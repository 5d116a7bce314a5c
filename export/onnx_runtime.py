"""Running an export's ONNX artefacts with ONNX Runtime: with onnxruntime and numpy alone (no
torch), for users who deploy them, and to measure each artefact's accuracy and latency.

    session = export.load_onnx("runs/x/export", precision="int8")
    logits = session.run(None, {"input": x})[0]   # x: float32 NCHW, normalised as arch.json says
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from export.manifest import ARCH, ONNX, ExportError, verify

PRECISIONS = {"fp32": ONNX, "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


def load_onnx(folder: str | Path, precision: str = "fp32"):
    """An ONNX Runtime CPU session of the export's model at `precision`, after checking the
    folder against its manifest (a truncated or modified artefact raises ExportError)."""

    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; precisions are {', '.join(PRECISIONS)}")
    name = PRECISIONS[precision]
    manifest = verify(folder, [ARCH, name])
    if name not in manifest:
        have = [p for p, n in PRECISIONS.items() if n in manifest]
        raise ExportError(f"{folder} has no {precision} artefact ({name}); it has {', '.join(have)} "
                          f"(export with export.quantize=[{precision}])")
    return session(Path(folder) / name)


def session(path: str | Path):
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for malformed files
        raise ExportError(f"{path} is not a loadable ONNX model: {e}") from e


def accuracy(sess, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    """Top-1 accuracy of a session on normalised float32 NCHW images."""
    logits = np.concatenate([sess.run(None, {"input": x[i:i + batch]})[0]
                             for i in range(0, len(x), batch)])
    return float((logits.argmax(1) == y).mean())


def latencies_ms(sessions: dict, shape: tuple[int, ...], repeats: int = 50,
                 warmup: int = 10) -> dict[str, float]:
    """Median milliseconds per run of a random float32 batch of `shape`, for each session,
    timed in alternation (one run each per round) so that drift biases none of them."""
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    for sess in sessions.values():
        for _ in range(warmup):
            sess.run(None, {"input": x})
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(repeats):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, {"input": x})
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def report(folder: str | Path, precisions: list[str], x: np.ndarray, y: np.ndarray) -> dict:
    """Per artefact: test accuracy, size on disk and ONNX Runtime CPU latency at batch 1 and 64."""
    folder = Path(folder)
    sessions = {p: session(folder / PRECISIONS[p]) for p in precisions}
    out = {p: {"test_acc": accuracy(s, x, y), "bytes": (folder / PRECISIONS[p]).stat().st_size}
           for p, s in sessions.items()}
    for batch in (1, 64):
        for p, ms in latencies_ms(sessions, (batch, *x.shape[1:])).items():
            out[p][f"latency_ms_b{batch}"] = ms
    return out
