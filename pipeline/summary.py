"""The table a run prints at its end: dense reference against the exported model."""
from __future__ import annotations

from maskednas.supernet.targets import COST_TARGETS


def summary_table(m: dict) -> str:
    lat = m["cpu_latency_ms"]
    rows = [
        ("", "dense (widest path)", "exported"),
        ("MACs", f"{m['dense_macs']:,}", f"{m['macs']:,} ({m['macs'] / m['dense_macs']:.1%})"),
        ("params", f"{m['dense_params']:,}", f"{m['params']:,} ({m['params'] / m['dense_params']:.1%})"),
        ("CPU latency b=1", f"{lat['dense_b1']:.2f} ms", f"{lat['slim_b1']:.2f} ms "
         f"({lat['dense_b1'] / lat['slim_b1']:.1f}x faster)"),
        ("CPU latency b=64", f"{lat['dense_b64']:.2f} ms", f"{lat['slim_b64']:.2f} ms "
         f"({lat['dense_b64'] / lat['slim_b64']:.1f}x faster)"),
        ("test accuracy", "", f"{m['slimmed_test_acc']:.4f} slimmed -> {m['test_acc']:.4f} fine-tuned"),
    ]
    if m.get("val_acc") is not None:
        rows.append(("validation accuracy", "", f"{m['slimmed_val_acc']:.4f} slimmed -> "
                                                f"{m['val_acc']:.4f} fine-tuned"))
    for name, f in m.get("cost_targets", {}).items():  # the run's other targets, as derived
        if name not in ("macs", "params"):
            show = COST_TARGETS.get(name).show
            rows.insert(3, (COST_TARGETS.get(name).label, show(f["dense"]),
                            f"{show(f['exported'])} (target {show(f['target'])})"))
    return columns(rows)


def latency_table(lat: dict) -> str:
    """The latency table's predictions against the models as timed after derivation."""
    rows = [(f"latency ({lat['runtime']}, batch {lat['batch']}, {lat['device']})", "dense",
             "exported"),
            ("predicted by the table", f"{lat['dense_predicted_ms']:.3f} ms",
             f"{lat['exported_predicted_ms']:.3f} ms" + (
                 f" (target {lat['target_ms']:.3f} ms)" if lat.get("target_ms") else "")),
            ("measured", f"{lat['dense_measured_ms']:.3f} ms",
             f"{lat['exported_measured_ms']:.3f} ms ({lat['prediction_error']:+.1%} off the "
             f"prediction, {lat.get('prediction_error_ms', 0.0):+.3f} ms; "
             f"{lat['relative_prediction_error']:+.1%} as a fraction of dense)")]
    return columns(rows)


def onnx_table(m: dict) -> str:
    """Each ONNX artefact as ONNX Runtime runs it on the CPU (empty without an ONNX export)."""
    report = m.get("onnx")
    if not report:
        return ""
    rows = [("ONNX Runtime (CPU)", "test acc", "size", "latency b=1", "latency b=64")]
    rows += [(p, f"{r['test_acc']:.4f}", f"{r['bytes'] / 1024:,.1f} KiB", f"{r['latency_ms_b1']:.3f} ms",
              f"{r['latency_ms_b64']:.3f} ms") for p, r in report.items()]
    return columns(rows)


def columns(rows: list[tuple[str, ...]]) -> str:
    """Rows of cells as left-aligned text columns."""
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, width)).rstrip() for r in rows)
