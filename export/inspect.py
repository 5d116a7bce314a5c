"""A readable account of an export folder: its architecture, exact cost and recorded metrics,
read from arch.json and metrics.json after the manifest check. Nothing is built or imported from
the record's source, so inspecting an export someone sent runs none of its code."""
from __future__ import annotations

from pathlib import Path

from maskednas.export.architecture import Architecture
from maskednas.export.folder import read_metrics
from maskednas.export.manifest import ARCH, ExportError


def describe_export(folder: str | Path) -> str:
    """Architecture, cost and metrics of the export in `folder`, as text.

    >>> import maskednas, tempfile, torch
    >>> from maskednas.export.folder import save_export
    >>> from maskednas.export.architecture import Architecture, LayerChoice
    >>> arch = Architecture(1, 8, 10, 4, (LayerChoice("conv_3x3", 4, 8, 2, False, kernel=3),))
    >>> folder = tempfile.mkdtemp() + "/export"
    >>> _ = save_export(folder, maskednas.build(arch), {}, {"test_acc": 0.5}, onnx=False)
    >>> print(describe_export(folder).splitlines()[0])
    macro network: 8x8 input with 1 channel(s), 10 classes
    """
    folder = Path(folder)
    metrics = read_metrics(folder)  # checks the whole folder against its manifest first
    try:
        arch = Architecture.load(folder / ARCH)
    except (ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{folder / ARCH} is not a valid architecture: {e}") from e
    cost = arch.cost()
    lines = [f"{arch.space} network: {arch.input_size}x{arch.input_size} input with "
             f"{arch.in_channels} channel(s), {arch.num_classes} classes"]
    lines += _layers(arch)
    lines.append(f"cost: {int(cost.macs):,} MACs, {int(cost.params):,} params")
    lines += [f"cost target {name}: {_figure(f['exported'])} (target {_figure(f['target'])}, "
              f"dense {_figure(f['dense'])})" for name, f in metrics.get("cost_targets", {}).items()]
    lines += [f"{key}: {value}" for key, value in metrics.items() if not isinstance(value, dict)]
    return "\n".join(lines)


def _layers(arch) -> list[str]:
    if arch.space == "model":
        kept = ", ".join(f"{group} {width}" for group, width in arch.widths.items())
        return [f"source: {arch.source}", f"kept channels: {kept or 'all'}",
                f"removed blocks: {', '.join(arch.removed) or 'none'}"]
    if arch.cells:
        return [f"genotype: {arch.genotype()}"]
    rows = [f"stem: {arch.stem_channels} channels"]
    for i, layer in enumerate(arch.layers):
        hidden = f", hidden {layer.hidden}" if layer.hidden is not None else ""
        what = "removed" if layer.removed else f"{layer.op} {layer.c_in}->{layer.c_out}{hidden}"
        rows.append(f"layer {i}: {what}, stride {layer.stride}{', residual' if layer.residual else ''}")
    return rows


def _figure(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"
