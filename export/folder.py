"""The export folder: everything a user needs to rebuild and run a subnet, nothing pickled.

    arch.json          the Architecture (rebuild with `export.build`)
    model.safetensors  the weights (state_dict of the compact model)
    config.yaml        the resolved run config
    metrics.json       test accuracy, MACs, params, latency, ...
    model.onnx         the same network for other runtimes (outputs checked with onnxruntime)
    model.fp16.onnx    optional: fp16 weights and activations, float32 inputs and outputs
    model.int8.onnx    optional: static int8 (QDQ, per-channel weights, calibrated)
    flops.txt          fvcore's per-module FLOP table
    hf/                a pruned Hugging Face language model whose layers keep the same widths, as
                       `save_pretrained` writes it (`AutoModelForCausalLM.from_pretrained` loads it)
    manifest.json      size and sha256 of every file above

`load(folder)` needs only `ops/` and `export/`. It checks the manifest first, so a truncated,
missing or modified file is named in the error instead of failing somewhere inside torch.
The folder is written whole under a temporary name and then swapped in: an interrupted export
never leaves a half-written folder in place of a good one.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save as save_safetensors

from maskednas.export.architecture import Architecture
from maskednas.export.compact import CompactNet, build
from maskednas.export.hf_models import example_input, is_language_model, plain_model
from maskednas.export.manifest import (ARCH, CONFIG, FLOPS, HF_FOLDER, METRICS, MANIFEST, ONNX, WEIGHTS,
                                       ExportError, files_of, sha256, verify)
# ONNX Runtime must reproduce PyTorch's logits to this fraction of their largest magnitude (fp32
# kernels differ in summation order by ~1e-6 of the scale; a wrong graph is off by far more)
ONNX_TOLERANCE = 1e-4


def save_export(folder: str | Path, model: CompactNet, config: dict, metrics: dict,
                onnx: bool = True, quantize: Sequence[str] = (),
                calibration: Iterable[np.ndarray] = (), calibration_method: str = "minmax",
                test_set: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Write the export folder; returns the metrics with the export-time checks added.

    `quantize` adds fp16 and/or int8 ONNX artefacts (int8 calibrated on `calibration`, normalised
    float32 NCHW batches); with `test_set` (normalised images, labels) every ONNX artefact's test
    accuracy, size and ONNX Runtime CPU latency go into metrics["onnx"]."""
    from maskednas.export import onnx_runtime
    from maskednas.export.flops import fvcore_report
    from maskednas.export.onnx_export import export_onnx, onnx_max_abs_diff
    from maskednas.export.quantize import strip_metadata, to_fp16, to_int8

    unknown = [p for p in quantize if p not in onnx_runtime.PRECISIONS or p == "fp32"]
    if unknown or (quantize and not onnx):
        raise ExportError(f"cannot export precision(s) {unknown or list(quantize)}: quantized "
                          f"artefacts are fp16 and int8, made from the ONNX model (onnx=True)")

    folder = Path(folder)
    if folder.exists() and not (folder.is_dir() and (folder / MANIFEST).is_file()):
        raise ExportError(f"{folder} exists and is not an export folder (no {MANIFEST}); an export "
                          f"replaces only an earlier export: choose another export name")
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    writing = tmp.name
    try:
        tmp.mkdir(parents=True)
        # exporters and safetensors want plain contiguous weights, whatever the training layout
        model = model.eval().cpu().to(memory_format=torch.contiguous_format)
        arch: Architecture = model.arch
        writing = ARCH  # the file being written, for the message of a refused write
        (tmp / ARCH).write_text(arch.to_json())
        writing = WEIGHTS  # serialised in memory, written by Python (an OSError on a full disk)
        (tmp / WEIGHTS).write_bytes(save_safetensors(
            {k: v.detach().contiguous() for k, v in model.state_dict().items()},
            metadata={"format": "maskednas-subnet", "version": "1"}))
        writing = CONFIG
        (tmp / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
        example = example_input(arch, 1)
        flops, params, table = fvcore_report(model, example)  # per image (per sequence)
        if flops != arch.cost().macs:  # checked before anything is swapped in
            raise ExportError(f"the architecture record counts {arch.cost().macs:,} MACs but fvcore "
                              f"counts {flops:,} on the model: the cost model is wrong for it, so "
                              f"nothing was exported")
        writing = FLOPS
        (tmp / FLOPS).write_text(table + "\n")
        metrics = {**metrics, "fvcore_flops": flops, "fvcore_params": params}
        if onnx:
            writing = ONNX
            export_onnx(model, example_input(arch, 2), tmp / ONNX)  # export specialises 0/1
            check = example_input(arch, 4)
            with torch.no_grad():
                scale = float(model(check).abs().max())
            diff = onnx_max_abs_diff(model, tmp / ONNX, check)
            if not diff <= ONNX_TOLERANCE * max(scale, 1.0):
                raise ExportError(f"ONNX Runtime's outputs differ from PyTorch's by {diff:.3g} "
                                  f"(largest logit {scale:.3g}; allowed {ONNX_TOLERANCE:g} of "
                                  f"it): the ONNX graph is wrong, so nothing was exported")
            metrics["onnx_max_abs_diff"] = diff
            strip_metadata(tmp / ONNX)  # the exporter's stack traces name local paths
            if "fp16" in quantize:
                writing = onnx_runtime.PRECISIONS["fp16"]
                to_fp16(tmp / ONNX, tmp / onnx_runtime.PRECISIONS["fp16"])
            if "int8" in quantize:
                writing = onnx_runtime.PRECISIONS["int8"]
                to_int8(tmp / ONNX, tmp / onnx_runtime.PRECISIONS["int8"], calibration,
                        calibration_method)
            if test_set is not None:
                metrics["onnx"] = onnx_runtime.report(tmp, ["fp32", *quantize], *test_set)
        hf, why_not = plain_model(model)
        if hf is not None:  # a Hugging Face folder that loads without this package
            writing = HF_FOLDER
            hf.save_pretrained(tmp / HF_FOLDER)
        elif is_language_model(getattr(arch, "source", "")):
            metrics["hf_folder"] = f"not written: {why_not}"
        writing = METRICS
        (tmp / METRICS).write_text(json.dumps(metrics, indent=2))
        writing = MANIFEST
        manifest = {name: {"bytes": (tmp / name).stat().st_size, "sha256": sha256(tmp / name)}
                    for name in files_of(tmp)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        writing = "the folder swap"
        _swap_in(tmp, folder)
    except OSError as e:  # a full disk: the earlier export, if any, stays as it was
        shutil.rmtree(tmp, ignore_errors=True)
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        kept = (f"the previous export in {folder} is kept" if folder.exists() else
                f"the previous export is in {old}" if old.exists() else "nothing was exported")
        raise ExportError(f"cannot write the export {folder} ({writing}): {e.strerror or e}; "
                          f"{kept}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return metrics


def _swap_in(tmp: Path, folder: Path) -> None:
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)  # left by an earlier process of this pid that died
    if folder.exists():
        folder.rename(old)
    try:
        tmp.rename(folder)
    except OSError:
        if old.exists():  # the earlier export goes back under its name
            old.rename(folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def load(folder: str | Path, device: str | torch.device = "cpu", trust_source=False) -> CompactNet:
    """Rebuild an exported subnet (eval mode) from its folder, without any supernet code.

    The folder is checked against its manifest before anything is built. A pruned user network
    whose source is the user's own factory loads only with `trust_source=True` (or the module
    prefixes to trust, e.g. `["mypkg"]`): building it imports that module, which can run any
    code. torchvision and timm sources, and the macro and DARTS spaces, need no opt-in.

    >>> import tempfile
    >>> import maskednas
    >>> from maskednas.export.folder import save_export
    >>> from maskednas import Architecture, build
    >>> from maskednas.export.architecture import LayerChoice
    >>> arch = Architecture(in_channels=1, input_size=8, num_classes=10, stem_channels=4,
    ...                     layers=(LayerChoice("conv_3x3", 4, 8, 2, False, kernel=3),))
    >>> folder = tempfile.mkdtemp() + "/export"
    >>> _ = save_export(folder, maskednas.build(arch), {}, {"test_acc": 0.5})
    >>> model = maskednas.load(folder)
    >>> model.training, model.arch == arch
    (False, True)
    """
    folder = Path(folder)
    verify(folder)
    try:
        arch = Architecture.load(folder / ARCH)
    except (ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{folder / ARCH} is not a valid architecture: {e}") from e
    model = build(arch, trust_source)
    try:
        state = load_file(str(folder / WEIGHTS))
    except Exception as e:  # safetensors raises its own error type for a malformed header
        raise ExportError(f"{folder / WEIGHTS} is not a readable safetensors file: {e}") from e
    expected = model.state_dict()
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    wrong = [k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise ExportError(f"{folder / WEIGHTS} does not match {ARCH}: missing {sorted(missing)[:5]}, "
                          f"unexpected {sorted(unexpected)[:5]}, wrong shape {sorted(wrong)[:5]}")
    model.load_state_dict(state)
    return model.eval().to(device)


def read_metrics(folder: str | Path) -> dict:
    """The export's recorded metrics, after checking the folder against its manifest.

    >>> import tempfile
    >>> import maskednas
    >>> from maskednas.export.folder import save_export
    >>> from maskednas import Architecture, build
    >>> from maskednas.export.architecture import LayerChoice
    >>> arch = Architecture(in_channels=1, input_size=8, num_classes=10, stem_channels=4,
    ...                     layers=(LayerChoice("conv_3x3", 4, 8, 2, False, kernel=3),))
    >>> folder = tempfile.mkdtemp() + "/export"
    >>> _ = save_export(folder, maskednas.build(arch), {}, {"test_acc": 0.5})
    >>> maskednas.read_metrics(folder)["test_acc"]
    0.5
    """
    verify(folder)
    try:
        return json.loads((Path(folder) / METRICS).read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{Path(folder) / METRICS} is not valid JSON: {e}") from e
