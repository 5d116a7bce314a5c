"""A readable account of an export folder: its architecture, exact cost and recorded metrics,
read from arch.json and metrics.json after the manifest check. Nothing is built or imported from
the record's source, so inspecting an export someone sent runs none of its code. `check_export`
goes further: it rebuilds the network, loads the weights and recounts the cost with fvcore (a
user-factory source only with `trust_source`)."""
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


def check_export(folder: str | Path, trust_source=False) -> str:
    """Rebuild the export (`export.load`: manifest first, then the record, then the weights),
    run one batch and recount MACs and params with fvcore; fail unless they are the recorded
    ones. Returns what was checked, as one line."""
    import torch

    from maskednas.export.flops import fvcore_report
    from maskednas.export.folder import load
    from maskednas.export.hf_models import example_input

    model = load(folder, trust_source=trust_source)
    arch = model.arch
    example = example_input(arch, 2)
    with torch.no_grad():
        out = model(example)
    # per image, or per token of each sequence (a language model)
    expected = (*example.shape[:1 if example.dim() == 4 else 2], arch.num_classes)
    if tuple(out.shape) != expected or not torch.isfinite(out).all():
        raise ExportError(f"{folder}: the rebuilt network gives {tuple(out.shape)} outputs "
                          f"(finite: {bool(torch.isfinite(out).all())}) for 2 inputs, expected "
                          f"{expected} finite logits")
    macs, params, _ = fvcore_report(model, example[:1])
    recorded = arch.cost()
    if (macs, params) != (int(recorded.macs), int(recorded.params)):
        raise ExportError(f"{folder}: fvcore counts {macs:,} MACs and {params:,} params on the "
                          f"rebuilt network, the record says {int(recorded.macs):,} and "
                          f"{int(recorded.params):,}")
    return (f"checked: the weights load into the rebuilt network, which gives finite "
            f"{arch.num_classes}-class logits; fvcore counts {macs:,} MACs and {params:,} params, "
            f"as recorded")


def _layers(arch) -> list[str]:
    if arch.space == "model":
        kept = ", ".join(f"{group} {width}" for group, width in arch.widths.items())
        return [f"source: {arch.source}", f"kept channels: {kept or 'all'}",
                f"removed blocks and branches: {', '.join(arch.removed_choices()) or 'none'}"]
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
