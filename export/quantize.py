"""fp16 and int8 versions of an exported ONNX model, with ONNX Runtime's own tooling.

int8 is static quantization in the QDQ format with per-channel int8 weights, its activation
ranges calibrated on training batches preprocessed as for evaluation; fp16 converts weights and
activations and keeps float32 inputs and outputs, so callers do not change.
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx

CALIBRATIONS = ("minmax", "entropy", "percentile")


def strip_metadata(path: str | Path) -> None:
    """Drop the exporter's per-node metadata (stack traces with local paths, FX node dumps) and
    value_info: a quarter of a small model's file, and nothing a runtime reads."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    model.graph.doc_string = ""
    del model.metadata_props[:]
    del model.graph.value_info[:]
    onnx.save(model, str(path))


def to_fp16(src: str | Path, dst: str | Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))


def to_int8(src: str | Path, dst: str | Path, batches: Iterable[np.ndarray],
            method: str = "minmax") -> None:
    """Static QDQ quantization calibrated on `batches` (normalised float32 NCHW arrays)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {"input": x}

    root = logging.getLogger()  # the tool logs a pre-processing hint and prints calibration steps
    level, root.level = root.level, logging.ERROR
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, weight_type=QuantType.QInt8,
                            activation_type=QuantType.QInt8, calibrate_method=methods[method])
    finally:
        root.setLevel(level)
    strip_metadata(dst)
