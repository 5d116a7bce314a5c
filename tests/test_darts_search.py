"""The DARTS space through the whole pipeline: search, resume, TensorBoard, the evaluation
network, export; and the step benchmark."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import interrupted_and_resumed, small_config
from maskednas.export import load
from maskednas.pipeline import ConfigError, load_config, run
from maskednas.pipeline.setup import prepare_search
from maskednas.search.tensorboard_log import SearchLogger

ROOT = Path(__file__).resolve().parents[1]
TINY_DARTS = ["space=darts", "darts.channels=4", "darts.cells=3", "darts.stem_multiplier=2",
              "darts.aux_skip=1.0", "derive.min_channels=2", "data.batch_size=256"]


def test_resumed_darts_search_equals_uninterrupted_search(tmp_path):
    cfg = small_config(tmp_path, *TINY_DARTS, "search.epochs=3")
    straight = prepare_search(cfg, tmp_path / "straight")
    straight.run()
    second = interrupted_and_resumed(cfg, tmp_path / "resumed", 2)
    for (name, a), b in zip(straight.net.state_dict().items(), second.net.state_dict().values()):
        assert torch.equal(a, b), name
    assert straight.history == second.history
    assert {"skips/normal", "skips/reduce"} <= straight.history[-1].keys()


def test_tensorboard_has_every_edge_and_the_skip_counts(tmp_path):
    cfg = small_config(tmp_path, *TINY_DARTS)
    searcher = prepare_search(cfg, tmp_path, logger_factory=SearchLogger)
    searcher.run()
    searcher.logger.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    net, epochs = searcher.net, cfg.search.epochs
    for kind in ("normal", "reduce"):
        assert len([e for e in events.Scalars(f"skips/{kind}")]) == epochs
        for row in ("n0<-s0", "n0<-s1", "n3<-n2"):
            series = [[e.value for e in events.Scalars(f"alpha/{kind}/{row}/{op}")] for op in net.names]
            assert all(len(s) == epochs for s in series)
            assert sum(s[-1] for s in series) == pytest.approx(1.0, abs=1e-5)
    assert sum(t.startswith("alpha/normal/") for t in scalars) == 14 * len(net.names)
    last = [e.value for e in events.Scalars("skips/normal")][-1]
    assert last == net.arch_stats()["skips/normal"]


def test_train_py_darts_search_to_evaluation_network_export(tmp_path):
    cfg = load_config(None, [*TINY_DARTS, "search.epochs=2", "search.warmup_epochs=1",
                             "finetune.epochs=2", "finetune.drop_path=0.2",
                             "finetune.aux_weight=0.4", "finetune.cutout=4",
                             "derive.eval_cells=4", "derive.eval_channels=6"])
    result = run(cfg, tmp_path / "run")
    folder = tmp_path / "run" / "export"
    model = load(folder)
    assert len(model.arch.cells) == 4 and model.arch.cells[0].channels == 6
    assert model.arch.genotype()["normal"] == [(e.op, e.source) for e in model.arch.cells[0].edges]
    assert result["fvcore_flops"] == model.arch.cost().macs
    assert result["from_scratch"] is True


def test_eval_network_needs_the_darts_space(tmp_path):
    with pytest.raises(ConfigError, match="DARTS evaluation network"):
        load_config(None, ["derive.eval_cells=20"])
    with pytest.raises(ConfigError, match="unknown space"):
        load_config(None, ["space=nasnet"])


def test_search_step_benchmark_reports_time_and_memory(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.search_step", "--batch", "4", "--size", "8", "--steps", "2",
         "--warmup", "1", "--device", "cpu", "--order", "2", "--out", str(tmp_path),
         "darts.channels=4", "darts.cells=3"], cwd=ROOT, capture_output=True, text=True,
        timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "search_step-cpu-darts-b4-fp32-o2.json").read_text())
    assert result["ms_per_step"] > 0 and result["peak_memory_gib"] > 0
    assert result["images_per_s"] == pytest.approx(2 * 4 / (result["ms_per_step"] / 1000), abs=0.1)
    assert "ms/step" in out.stdout
