"""`train.py` end to end on digits, run as a user runs it (a subprocess): search, derive, slim,
fine-tune, export, reload; a second derivation from the same search with another target,
without searching again; resume; and the command line's errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import SMALL_RUN
from maskednas.datasource import load_dataset, DeviceLoader
from maskednas.export import load, read_metrics
from maskednas.training.finetune import evaluate

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert (out.returncode == 0) == ok, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    # long enough for the cost penalty to steer the derived network onto the target
    wider = "macro.stages=[{channels: 12, layers: 2, stride: 1}, {channels: 24, layers: 2, stride: 2}]"
    cli("--config", "configs/digits.yaml", *SMALL_RUN, wider, "search.epochs=8",
        "search.warmup_epochs=2", f"out_dir={out}", "name=cli")
    return out / "cli", json.loads((out / "cli" / "summary-export.json").read_text())


def test_run_directory_holds_config_checkpoint_events_and_export(run):
    run_dir, metrics = run
    assert (run_dir / "config.yaml").is_file() and (run_dir / "search.pt").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert read_metrics(run_dir / "export") == json.loads((run_dir / "summary-export.json").read_text())
    assert metrics["fvcore_flops"] == metrics["macs"]
    assert metrics["slim_max_abs_diff"] < 1e-5
    assert abs(metrics["macs"] - metrics["target_macs"]) <= 0.03 * metrics["target_macs"]
    assert {"dense_b1", "dense_b64", "slim_b1", "slim_b64"} == metrics["cpu_latency_ms"].keys()


def test_exported_model_reproduces_its_recorded_test_accuracy(run):
    run_dir, _ = run
    model = load(run_dir / "export")
    metrics = read_metrics(run_dir / "export")
    data = load_dataset("digits")
    stats = metrics["data"]
    test = DeviceLoader(data.x_test, data.y_test, 64, stats["mean"], stats["std"], shuffle=False,
                        drop_last=False)
    assert evaluate(model, test)["acc"] == metrics["test_acc"]


def test_derive_again_with_another_target_without_searching(run):
    run_dir, metrics = run
    before = (run_dir / "search.pt").read_bytes()
    target = round(0.7 * metrics["target_macs"])
    done = cli("--run", str(run_dir), "--stages", "derive,export", "--export-name", "export_small",
               f"derive.target.macs={target}")
    again = json.loads((run_dir / "summary-export_small.json").read_text())
    assert (run_dir / "search.pt").read_bytes() == before  # the search was not touched
    # met within the tolerance, or the closest reachable network, said so (a tiny space's
    # widths can step by more than 3%)
    assert (abs(again["macs"] - target) <= 0.03 * target
            or f"cannot meet the MACs target {target:,} MACs within 3%: the closest is "
               f"{again['macs']:,} MACs" in done.stderr), done.stderr[-2000:]
    assert abs(again["macs"] - target) <= 0.1 * target
    assert again["macs"] < metrics["macs"]
    assert read_metrics(run_dir / "export_small")["macs"] == again["macs"]
    assert load(run_dir / "export_small").arch.cost().macs == again["macs"]


@pytest.mark.parametrize("args,message", [
    (["--stages", "export,derive"], "stages must come in the order"),
    (["--stages", "finetune"], "include 'derive'"),
    (["--stages", "prune"], "unknown stage 'prune'"),
    (["--run", "/nonexistent", "--stages", "derive"], "no run 'nonexistent' exists"),
    (["search.epoch=2"], "unknown config key 'search.epoch'"),
])
def test_cli_errors_are_one_line_and_exit_non_zero(args, message):
    out = cli(*args, ok=False)
    assert out.stderr.startswith("error: ") and message in out.stderr
    assert "Traceback" not in out.stderr


def test_a_new_run_never_overwrites_an_earlier_search(run):
    run_dir, _ = run
    before = (run_dir / "search.pt").read_bytes()
    out = cli("--config", "configs/digits.yaml", f"out_dir={run_dir.parent}", f"name={run_dir.name}",
              ok=False)
    assert "already holds a search; continue it with --resume" in out.stderr
    assert (run_dir / "search.pt").read_bytes() == before


def test_resume_continues_the_same_run(tmp_path):
    # overrides stand before and after options alike
    cli(*SMALL_RUN[:3], "--config", "configs/digits.yaml", "--stages", "search", *SMALL_RUN[3:],
        f"out_dir={tmp_path}", "name=r", "search.epochs=2")
    run_dir = tmp_path / "r"
    first = torch.load(run_dir / "search.pt", weights_only=True)
    cli("--resume", str(run_dir), "--stages", "search", "search.epochs=3")
    state = torch.load(run_dir / "search.pt", weights_only=True)
    assert state["epoch"] == 3 and state["history"][:2] == first["history"]
    config = (run_dir / "config.yaml").read_text()
    assert "epochs: 3" in config and "batch_size: 128" in config and "stem_channels: 6" in config


def test_the_dense_and_exported_models_are_timed_in_one_memory_format(tmp_path, monkeypatch):
    """A speed-up must be the search's, not channels_last's: both models are timed in the run's
    memory format, and the pipeline passes it."""
    import torch

    import maskednas.pipeline.stages as stages
    from maskednas.pipeline import load_config, run
    seen = []
    monkeypatch.setattr(stages, "latencies_ms", lambda models, shape: seen.append(
        {n: m[0].weight.is_contiguous(memory_format=torch.channels_last) for n, m in models.items()})
        or dict.fromkeys(models, 1.0))
    conv = lambda: torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.ReLU())
    for channels_last in (True, False):
        stages.cpu_latencies({"dense": conv(), "slim": conv().to(memory_format=torch.channels_last)},
                             (4, 8, 8), channels_last)
        assert seen[-1] == {"dense": channels_last, "slim": channels_last}

    monkeypatch.undo()
    passed = []
    real = stages.cpu_latencies
    monkeypatch.setattr(stages, "cpu_latencies", lambda models, shape, channels_last, inputs: passed.append(
        channels_last) or real(models, shape, channels_last, inputs))
    cfg = load_config("digits", ["search.epochs=1", "search.warmup_epochs=0", "finetune.epochs=0",
                                 "data.batch_size=256"])
    run(cfg, tmp_path / "run", ["search", "derive"], report=lambda line: None)
    assert passed == [cfg.channels_last] == [True]
