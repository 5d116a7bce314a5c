"""An export someone sends must not run code: a pruned-model record whose source names a user's
factory (`package.module:function`) is rebuilt only when the caller opts in, and the manifest is
checked before anything is imported."""
from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conftest import maskednas_main
from maskednas.export import ExportError, build, load
from maskednas.export.flops import fvcore_report
from maskednas.export.manifest import ARCH, MANIFEST, METRICS, WEIGHTS, sha256
from maskednas.export.model_source import UntrustedSourceError
from maskednas.export.pruned_model import PrunedArchitecture

FACTORY = '''
from pathlib import Path
from torch import nn
Path({marker!r}).with_suffix(".imported").write_text("top-level code ran")


def build(num_classes=10, in_channels=1):
    Path({marker!r}).with_suffix(".called").write_text("the factory ran")
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
'''


def the_network() -> nn.Module:
    """What the planted factory builds, made here without importing it."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 10))


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A module with import-time side effects on the Python path, and an export folder (with a
    consistent manifest, as a sender would make it) whose record names its factory."""
    module = f"victim_{uuid.uuid4().hex[:8]}"
    code = tmp_path / "code"
    code.mkdir()
    marker = tmp_path / "marker"
    (code / f"{module}.py").write_text(FACTORY.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(code))
    torch.manual_seed(0)
    net = the_network().eval()
    macs, params, _ = fvcore_report(net, torch.randn(1, 1, 8, 8))
    arch = PrunedArchitecture(source=f"{module}:build", in_channels=1, input_size=8,
                              num_classes=10, macs=macs, params=params)
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / ARCH).write_text(arch.to_json())
    save_file(net.state_dict(), str(folder / WEIGHTS))
    (folder / METRICS).write_text(json.dumps({"test_acc": 0.5}))
    write_manifest(folder)
    yield {"module": module, "marker": marker, "folder": folder, "arch": arch, "net": net}
    sys.modules.pop(module, None)


def write_manifest(folder: Path) -> None:
    files = sorted(p for p in folder.iterdir() if p.name != MANIFEST)
    (folder / MANIFEST).write_text(json.dumps(
        {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files}))


def ran(p) -> list[str]:
    return [s for s in (".imported", ".called") if p["marker"].with_suffix(s).exists()]


def test_a_user_factory_record_runs_nothing_without_the_opt_in(planted):
    p = planted
    for attempt in (lambda: load(p["folder"]), lambda: build(p["arch"]),
                    lambda: load(p["folder"], trust_source=["other_pkg"]),
                    lambda: load(p["folder"], trust_source=p["module"][:4])):  # a name's prefix
        with pytest.raises(UntrustedSourceError, match=f"'{p['module']}:build'.*trust_source=True"):
            attempt()
    assert ran(p) == [] and p["module"] not in sys.modules


def test_the_opt_in_builds_the_network_with_its_weights(planted):
    p = planted
    x = torch.randn(3, 1, 8, 8)
    model = load(p["folder"], trust_source=[p["module"]])
    assert ran(p) == [".imported", ".called"]
    with torch.no_grad():
        assert torch.equal(model(x), p["net"](x))
    assert torch.equal(load(p["folder"], trust_source=True)(x), model(x))


def test_the_manifest_is_checked_before_anything_is_imported(planted):
    p = planted
    record = (p["folder"] / ARCH).read_text()
    (p["folder"] / ARCH).write_text(record.replace('"num_classes": 10', '"num_classes": 12'))
    with pytest.raises(ExportError, match="does not match its sha256"):
        load(p["folder"], trust_source=True)
    assert ran(p) == []


def test_bad_trust_values_are_refused_before_anything_is_imported(planted):
    with pytest.raises(ValueError, match="trust_source must be True, False or module prefixes"):
        load(planted["folder"], trust_source=["../code"])
    assert ran(planted) == []


def test_the_command_checks_an_export_only_with_trust_source(planted, capsys):
    p = planted
    with pytest.raises(SystemExit) as refused:
        maskednas_main(["inspect", str(p["folder"]), "--check"])
    assert refused.value.code.startswith("error: ") and "--trust-source" in refused.value.code
    assert ran(p) == []
    capsys.readouterr()
    maskednas_main(["inspect", str(p["folder"]), "--check", "--trust-package", p["module"]])
    out = capsys.readouterr().out
    assert f"source: {p['module']}:build" in out
    assert f"fvcore counts {p['arch'].macs:,} MACs and {p['arch'].params:,} params, as recorded" in out


def test_a_package_trusts_its_subpackages_and_nothing_else():
    from maskednas.export.model_source import check_trusted
    check_trusted("mypkg.models.nets:build", ["mypkg"], "a record")
    check_trusted("mypkg:build", "mypkg", "a record")
    check_trusted("torchvision:resnet18", False, "a record")
    for source in ("mypkg2:build", "my:build", "other.mypkg:build"):
        with pytest.raises(UntrustedSourceError):
            check_trusted(source, ["mypkg"], "a record")


@pytest.mark.parametrize("bad", [1, "../code", ["ok", 3], {"mypkg": True}])
def test_a_malformed_trust_value_is_refused_for_every_record(bad):
    from maskednas import Architecture
    from maskednas.export.architecture import LayerChoice
    arch = Architecture(1, 8, 10, 4, (LayerChoice("conv_3x3", 4, 8, 2, False, kernel=3),))
    with pytest.raises(ValueError, match="trust_source must be True, False or module prefixes"):
        build(arch, trust_source=bad)


def test_trust_flags_without_check_are_refused(planted):
    with pytest.raises(SystemExit) as refused:
        maskednas_main(["inspect", str(planted["folder"]), "--trust-source"])
    assert "apply to --check only" in refused.value.code and ran(planted) == []
