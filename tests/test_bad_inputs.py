"""Bad input and faults, as a hostile user would try them: every case ends in one line that says
what was wrong and what is allowed, exits non-zero, and writes nothing. docs/bad_inputs.md lists
the cases with their messages; a test keeps the table and these cases in step."""
from __future__ import annotations

import json
import runpy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from conftest import SMALL_RUN
from maskednas.export import ExportError, load, read_metrics
from maskednas.export.folder import MANIFEST, METRICS, WEIGHTS
from maskednas.pipeline import load_config, run
from maskednas.pipeline.setup import prepare_search

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "bad_inputs.md"


@dataclass
class Ctx:
    tmp: Path  # a folder for this case's files and runs
    run_dir: Path  # a finished tiny search with an export
    held: list = field(default_factory=list)  # run locks this process holds for the case

    def npz(self, **change) -> str:
        """A small valid NHWC data set, with `change` applied to its arrays."""
        rng = np.random.default_rng(0)
        arrays = {"x_train": rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8),
                  "y_train": np.arange(40) % 4,
                  "x_test": rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8),
                  "y_test": np.arange(12) % 4}
        arrays.update(change)
        path = self.tmp / "data.npz"
        np.savez(path, **arrays)
        return str(path)

    def weights(self, tensors: dict) -> str:
        from safetensors.torch import save_file
        save_file(tensors, str(self.tmp / "weights.safetensors"))
        return str(self.tmp / "weights.safetensors")

    def live_run(self) -> Path:
        """A run folder held by a live run (this process holds its lock until the case ends)."""
        from maskednas.common.run_lock import RunLock
        folder = self.tmp / "live_out" / "live"
        folder.mkdir(parents=True)
        self.held.append(RunLock(folder).__enter__())
        return folder

    def file(self, name: str, text: str) -> str:
        (self.tmp / name).write_text(text)
        return str(self.tmp / name)

    def latency_table(self, **space) -> str:
        """A made-up latency table of the default digits space (or of it with `space` changed)."""
        from conftest import synthetic_table
        from maskednas.supernet import MacroSupernet

        cfg = load_config(ROOT / "configs" / "digits.yaml")
        for key, value in space.items():
            setattr(cfg.space_config, key, value)
        path = self.tmp / "latency_table.json"
        torch.set_num_threads(cfg.threads or torch.get_num_threads())  # what the run's table records
        synthetic_table(MacroSupernet(cfg.space_config, 1, 10, 8), channels_last=True).save(path)
        return str(path)


@dataclass
class Case:
    id: str
    what: str  # the bad input, as the docs table shows it
    argv: Callable[[Ctx], list[str]]
    message: str  # what the one-line error must say
    needs_no_gpu: bool = False


def npz_case(id: str, what: str, message: str, **change) -> Case:
    return Case(id, what, lambda c: ["data.name=npz", f"data.path={c.npz(**change)}"], message)


CASES = [
    # -- config keys, types and ranges ----------------------------------------------------------
    Case("unknown-key", "`search.epoch=2`", lambda c: ["search.epoch=2"],
         "unknown config key 'search.epoch'; valid keys in 'search': epochs"),
    Case("unknown-section", "`serch.epochs=3`", lambda c: ["serch.epochs=3"],
         "unknown config key 'serch'; valid keys at the top level:"),
    Case("wrong-type", "`search.epochs=three`", lambda c: ["search.epochs=three"],
         "search.epochs must be int, got 'three'"),
    Case("override-without-value", "`search.epochs`", lambda c: ["search.epochs"],
         "must look like key=value"),
    Case("override-bad-yaml", "`macro.candidates=[conv_3x3`", lambda c: ["macro.candidates=[conv_3x3"],
         "the value is not valid YAML"),
    Case("negative-search-lr", "`search.w_lr=-1`", lambda c: ["search.w_lr=-1"],
         "search.w_lr must be > 0, got -1.0"),
    Case("unknown-optimizer", "`finetune.optimizer=adam`", lambda c: ["finetune.optimizer=adam"],
         "finetune.optimizer must be one of sgd, adamw, got 'adam'"),
    Case("second-order-adamw", "`search.order=2 search.w_optimizer=adamw`",
         lambda c: ["search.order=2", "search.w_optimizer=adamw"],
         "search.order=2 differentiates through one virtual SGD step of the weights, but "
         "search.w_optimizer=adamw: use search.order=1 or search.w_optimizer=sgd"),
    Case("negative-finetune-lr", "`finetune.lr=-1`", lambda c: ["finetune.lr=-1"],
         "finetune.lr must be > 0, got -1.0"),
    Case("zero-log-every", "`log_every=0`", lambda c: ["log_every=0"], "log_every must be >= 1, got 0"),
    Case("negative-crop-padding", "`data.crop_padding=-1`", lambda c: ["data.crop_padding=-1"],
         "data.crop_padding must be >= 0, got -1"),
    Case("zero-batch", "`data.batch_size=0`", lambda c: ["data.batch_size=0"],
         "data.batch_size must be >= 1, got 0"),
    Case("arch-fraction-one", "`search.arch_fraction=1`", lambda c: ["search.arch_fraction=1"],
         "search.arch_fraction must be in (0, 1), got 1.0"),
    Case("validation-fraction-one", "`data.validation_fraction=1`",
         lambda c: ["data.validation_fraction=1"], "data.validation_fraction must be in [0, 1), got 1.0"),
    Case("moved-weight-data", "`search.weight_data=split`", lambda c: ["search.weight_data=split"],
         "config key 'search.weight_data' is now 'search.regime' (write search.regime=bilevel)"),
    Case("warmup-beyond-epochs", "`search.warmup_epochs=50`", lambda c: ["search.warmup_epochs=50"],
         "search.warmup_epochs must be in [0, search.epochs="),
    Case("order-three", "`search.order=3`", lambda c: ["search.order=3"],
         "search.order must be 1 (first order) or 2 (second order), got 3"),
    Case("unknown-regime", "`search.regime=half`", lambda c: ["search.regime=half"],
         "search.regime must be one of bilevel, single_level, got 'half'"),
    Case("search-kd-without-teacher", "`search.kd_weight=0.5` (macro space)",
         lambda c: ["search.kd_weight=0.5"], "search.kd_weight distils from the network as it was"),
    Case("zero-surrogate-temperature", "`search.target.surrogate_temperature=0`",
         lambda c: ["search.target.surrogate_temperature=0"],
         "search.target.surrogate_temperature must be > 0, got 0"),
    Case("fraction-above-one", "`search.targets.macs.fraction=1.5`",
         lambda c: ["search.targets.macs.fraction=1.5"], "search.targets.macs.fraction must be in (0, 1]"),
    Case("unknown-estimator", "`search.target.estimator=guess`",
         lambda c: ["search.target.estimator=guess"],
         "search.target.estimator must be one of discrete, expected, got 'guess'"),
    Case("drop-path-one", "`finetune.drop_path=1`", lambda c: ["finetune.drop_path=1"],
         "finetune.drop_path must be in [0, 1), got 1.0"),
    Case("empty-candidates", "`macro.candidates=[]`", lambda c: ["macro.candidates=[]"],
         "macro.candidates and macro.first_candidates must each name at least one op"),
    Case("zero-first-candidate", "`macro.first_candidates=[zero]`",
         lambda c: ["macro.first_candidates=[zero]"], "'zero' cannot be a first-layer candidate"),
    Case("unknown-op", "`macro.candidates=[conv_9x9]`", lambda c: ["macro.candidates=[conv_9x9]"],
         "unknown op 'conv_9x9'; registered:"),
    Case("unknown-space", "`space=nasnet`", lambda c: ["space=nasnet"],
         "unknown space 'nasnet'; spaces are darts, macro"),
    Case("other-space-section", "`darts.channels=4` while `space` is macro",
         lambda c: ["darts.channels=4"], "section 'darts' configures the darts space, but space is 'macro'"),
    Case("eval-cells-without-cells", "`derive.eval_cells=20` in the macro space",
         lambda c: ["derive.eval_cells=20"], "derive.eval_cells builds a DARTS evaluation network"),
    Case("unknown-precision", "`export.quantize=[int4]`", lambda c: ["export.quantize=[int4]"],
         "export.quantize must list precisions from fp16, int8, got ['int4']"),
    Case("unknown-calibration", "`export.calibration=mse`", lambda c: ["export.calibration=mse"],
         "export.calibration must be one of minmax, entropy, percentile, got 'mse'"),
    Case("unknown-device", "`device=tpu`", lambda c: ["device=tpu"],
         "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    Case("cuda-without-gpu", "`device=cuda` on a machine without a GPU", lambda c: ["device=cuda"],
         "device='cuda' but CUDA is not available here", needs_no_gpu=True),
    Case("target-above-dense", "`search.targets.macs.value=1e12`", lambda c: ["search.targets.macs.value=1e12"],
         "is above the dense network of this search space"),
    Case("target-below-smallest", "`search.targets.macs.value=10`", lambda c: ["search.targets.macs.value=10"],
         "is below the smallest network this search space can reach"),
    Case("earlier-target-key", "`search.target.macs_fraction=0.3` (the earlier form)",
         lambda c: ["search.target.macs_fraction=0.3"],
         "config key 'search.target.macs_fraction' is now 'search.targets.macs.fraction'"),
    Case("unknown-cost-target", "`search.targets.energy.value=1`",
         lambda c: ["search.targets.energy.value=1"],
         "search.targets.energy: unknown cost target 'energy'; registered: latency_ms, macs"),
    Case("target-value-and-fraction", "`search.targets={macs: {value: 1e5, fraction: 0.3}}`",
         lambda c: ["search.targets={macs: {value: 1e5, fraction: 0.3}}"],
         "search.targets.macs needs exactly one of value"),
    Case("peak-memory-on-macro", "`search.targets.peak_memory_kib.value=10` in the macro space",
         lambda c: ["search.targets.peak_memory_kib.value=10"],
         "the 'macro' space has no per-layer activation shapes"),
    # -- config files -----------------------------------------------------------------------------
    Case("unknown-shipped-config", "`--config nope`", lambda c: ["--config", "nope"],
         "unknown config 'nope'; shipped configs: cifar10, cifar10_subset"),
    Case("missing-config", "`--config missing.yaml`", lambda c: ["--config", str(c.tmp / "missing.yaml")],
         "does not exist"),
    Case("malformed-yaml", "a config file with broken YAML",
         lambda c: ["--config", c.file("bad.yaml", "search: {epochs: [1,\n")], "is not valid YAML"),
    Case("config-not-mapping", "a config file holding a list",
         lambda c: ["--config", c.file("list.yaml", "- 1\n- 2\n")], "a config file must be a mapping"),
    # -- names that are paths -------------------------------------------------------------------
    Case("run-name-escapes", "`name=../../escaped`", lambda c: ["name=../../escaped"],
         "name must be a plain folder name"),
    Case("run-name-absolute", "`name=/abs/dir`", lambda c: [f"name={c.tmp / 'abs'}"],
         "name must be a plain folder name"),
    Case("export-name-dot", "`--export-name .` on `--run`",
         lambda c: ["--run", str(c.run_dir), "--stages", "derive,export", "--export-name", "."],
         "--export-name must be a plain folder name"),
    Case("export-name-absolute", "`--export-name /some/dir`",
         lambda c: ["--export-name", str(c.tmp / "elsewhere")], "--export-name must be a plain folder name"),
    # -- stages and runs --------------------------------------------------------------------------
    Case("stage-order", "`--stages export,derive`", lambda c: ["--stages", "export,derive"],
         "stages must come in the order search,derive,finetune,export"),
    Case("unknown-stage", "`--stages prune`", lambda c: ["--stages", "prune"], "unknown stage 'prune'"),
    Case("finetune-without-derive", "`--stages finetune`", lambda c: ["--stages", "finetune"],
         "finetune and export work on a derived model: include 'derive'"),
    Case("resume-and-run", "`--resume A --run B`",
         lambda c: ["--resume", str(c.run_dir), "--run", str(c.run_dir), "--stages", "derive"],
         "use either --resume (continue a run) or --run (later stages), not both"),
    Case("run-missing", "`--run runs/none` (no such run)", lambda c: ["--run", str(c.tmp / "none"), "--stages", "derive"],
         "no run 'none' exists; runs in"),
    Case("resume-missing", "`--resume runs/none` (no such run)", lambda c: ["--resume", str(c.tmp / "none")],
         "no run 'none' exists; runs in"),
    Case("run-not-a-run", "`--run` on a folder without config.yaml",
         lambda c: ["--run", str(c.tmp), "--stages", "derive"],
         "is not a run directory (it has no config.yaml"),
    Case("accept-changed-data-without-resume", "`--accept-changed-data` on a new run",
         lambda c: ["--accept-changed-data"], "--accept-changed-data applies to --resume only"),
    Case("live-run", "a new run named like a live one", lambda c: [f"out_dir={c.live_run().parent}", "name=live"],
         "is in use by a live run (pid"),
    Case("existing-search", "a new run named like one that holds a search",
         lambda c: [f"out_dir={c.run_dir.parent}", f"name={c.run_dir.name}"],
         "already holds a search; continue it with --resume"),
    Case("resume-changes-space", "`--resume RUN macro.stem_channels=8`",
         lambda c: ["--resume", str(c.run_dir), "macro.stem_channels=8"],
         "--resume cannot change macro.stem_channels (the run has 6, this asks for 8)"),
    Case("resume-changes-target", "`--resume RUN search.targets.macs.fraction=0.2`",
         lambda c: ["--resume", str(c.run_dir), "search.targets.macs.fraction=0.2"],
         "--resume cannot change search.targets.macs.fraction"),
    Case("run-changes-space", "`--run RUN --stages derive,finetune,export macro.stem_channels=8`",
         lambda c: ["--run", str(c.run_dir), "--stages", "derive,finetune,export", "macro.stem_channels=8"],
         "--run cannot change macro.stem_channels"),
    Case("run-without-checkpoint", "`--run` on a run whose search never saved",
         lambda c: ["--run", str(c.tmp / "bare"), "--stages", "derive"], "has no search checkpoint"),
    # -- latency targets --------------------------------------------------------------------------
    Case("latency-on-darts-space", "`--config configs/darts_digits.yaml search.targets={latency_ms: {value: 1}}`",
         lambda c: ["--config", "configs/darts_digits.yaml", "search.targets={latency_ms: {value: 1}}"],
         "the 'darts' space has no latency model"),
    Case("unknown-latency-runtime", "`latency.runtime=tensorrt`", lambda c: ["latency.runtime=tensorrt"],
         "latency.runtime must be one of torch, onnxruntime, got 'tensorrt'"),
    Case("onnxruntime-on-cuda", "`latency.runtime=onnxruntime latency.device=cuda`",
         lambda c: ["latency.runtime=onnxruntime", "latency.device=cuda"],
         "latency.runtime=onnxruntime runs on the CPU"),
    Case("latency-device-without-cuda", "`search.targets={latency_ms: {value: 1}} latency.device=cuda` (no GPU)",
         lambda c: ["search.targets={latency_ms: {value: 1}}", "latency.device=cuda"],
         "latency.device='cuda' but CUDA is not available here", needs_no_gpu=True),
    Case("missing-latency-table", "`latency.table=` a file that does not exist",
         lambda c: ["search.targets={latency_ms: {value: 1}}", f"latency.table={c.tmp / 'none.json'}"],
         "none.json' does not exist"),
    Case("latency-table-of-another-space", "`latency.table=` a table of another space config",
         lambda c: ["search.targets={latency_ms: {value: 1}}", f"latency.table={c.latency_table(stem_channels=8)}"],
         "was measured for parts"),
    Case("latency-target-below-fastest", "`search.targets={latency_ms: {value: 0.001}}` (below the fastest network)",
         lambda c: ["search.targets={latency_ms: {value: 0.001}}", f"latency.table={c.latency_table()}"],
         "is below the fastest network this search space can reach"),
    # -- data -----------------------------------------------------------------------------------
    Case("unknown-dataset", "`data.name=mnist`", lambda c: ["data.name=mnist"],
         "unknown dataset 'mnist'; registered:"),
    Case("npz-without-path", "`data.name=npz` without `data.path`", lambda c: ["data.name=npz"],
         "data.name=npz needs data.path=<file.npz>"),
    Case("npz-missing-file", "`data.path` naming no file",
         lambda c: ["data.name=npz", f"data.path={c.tmp / 'none.npz'}"], "does not exist"),
    Case("npz-corrupted", "an .npz file that is not one",
         lambda c: ["data.name=npz", f"data.path={c.file('bad.npz', 'not a zip')}"],
         "is not a readable .npz file"),
    npz_case("labels-outside-test", "y_test with a label y_train does not have", "y_test has labels [9] outside 0..3",
             y_test=np.array([0, 1, 2, 3] * 2 + [9, 0, 1, 2])),
    npz_case("labels-negative", "a negative label", "y_train has negative labels",
             y_train=np.r_[np.arange(39) % 4, -1]),
    npz_case("labels-with-gap", "y_train labels 0..3 and 5 (no 4)", "labels must be 0..K-1 with every class in y_train",
             y_train=np.r_[np.arange(39) % 4, 5]),
    npz_case("stray-label", "one training label of a class of its own (199 images of classes 0..3, one of 4)",
             "class 4: 1 train / 0 test images, against a median of 50 training images per class: a stray label?",
             x_train=np.zeros((200, 8, 8, 3), np.uint8), y_train=np.r_[np.arange(199) % 4, 4]),
    Case("declared-count-excludes-label", "`data.num_classes=4` with a training label 4",
         lambda c: ["data.name=npz", f"data.path={c.npz(y_train=np.r_[np.arange(39) % 4, 4])}",
                    "data.num_classes=4"], "y_train has labels [4] outside 0..3 (data.num_classes=4;"),
    Case("declared-count-above-labels", "`data.num_classes=6` for labels 0..3",
         lambda c: ["data.name=npz", f"data.path={c.npz()}", "data.num_classes=6"],
         "data.num_classes=6 but classes [4, 5] have no training images"),
    Case("num-classes-one", "`data.num_classes=1`", lambda c: ["data.num_classes=1"],
         "data.num_classes must be >= 2, got 1"),
    npz_case("labels-float", "fractional labels", "y_train must be a 1-D array of integer class labels",
             y_train=np.arange(40) % 4 + 0.5),
    npz_case("test-size-differs", "x_test 6x6, x_train 8x8", "x_test images are 6x6 with 3 channel(s), x_train's 8x8",
             x_test=np.zeros((12, 6, 6, 3), np.uint8)),
    npz_case("test-channels-differ", "x_test grey, x_train RGB", "x_test images are 8x8 with 1 channel(s)",
             x_test=np.zeros((12, 8, 8, 1), np.uint8)),
    npz_case("nchw-array", "x_train stored (N, C, H, W)", "it looks like (N, C, H, W): pass x.transpose(0, 2, 3, 1)",
             x_train=np.zeros((40, 3, 8, 8), np.uint8)),
    npz_case("non-square", "8x6 images", "images must be (N, H, W, C) with square H == W",
             x_train=np.zeros((40, 8, 6, 3), np.uint8)),
    npz_case("float-images", "float32 images", "x_train must be a uint8 array of shape (N, H, W, C)",
             x_train=np.zeros((40, 8, 8, 3), np.float32)),
    # -- the model space: a user's network (a model.* override alone selects
    # configs/prune_model.yaml: otherwise the first cases would meet the macro section rule) -----
    Case("unknown-model-name", "`model.source=torchvision:resnet_18`",
         lambda c: ["model.source=torchvision:resnet_18"],
         "torchvision has no model 'resnet_18'; close names: resnet18"),
    Case("model-source-is-a-path", "`model.source=../nets/net.py:build`",
         lambda c: ["model.source=../nets/net.py:build"], "never a file path"),
    Case("model-source-not-importable", "`model.source=no_such_pkg.nets:build`",
         lambda c: ["model.source=no_such_pkg.nets:build"], "cannot import 'no_such_pkg.nets'"),
    Case("missing-checkpoint", "`model.checkpoint=` a file that does not exist",
         lambda c: [f"model.checkpoint={c.tmp / 'none.safetensors'}"], "none.safetensors' does not exist"),
    Case("checkpoint-of-another-network", "`model.checkpoint=` weights of another network",
         lambda c: [f"model.checkpoint={c.weights({'stem.weight': torch.zeros(2)})}"],
         "does not fit the model: missing ['bn1.bias'"),
    Case("distil-from-random-network", "`finetune.kd_weight=0.5` without model.checkpoint",
         lambda c: ["model.source=torchvision:resnet18", "finetune.kd_weight=0.5"],
         "model.checkpoint is unset and model.pretrained is false"),
    Case("language-model-on-images", "`model.source=hf:llama` on digits",
         lambda c: ["model.source=hf:llama"],
         "model.source=hf:llama is a language model: it reads text, data.name=pydoc or textfile"),
    Case("text-for-an-image-network", "`data.name=pydoc` for the macro space",
         lambda c: ["data.name=pydoc"], "data.name=pydoc is text (token ids): it trains a language model"),
    Case("unknown-ignored-layer", "`model.ignore=[layer9]`", lambda c: ["model.ignore=[layer9]"],
         "model.ignore names ['layer9'], which torchvision:resnet18 does not have"),
    Case("model-section-in-macro-config", "`--config configs/digits.yaml model.depth=false`",
         lambda c: ["--config", "configs/digits.yaml", "model.depth=false"],
         "section 'model' configures the model space, but space is 'macro'"),
    npz_case("length-mismatch", "39 labels for 40 images", "x_train has 40 images but y_train has 39 labels",
             y_train=np.arange(39) % 4),
    npz_case("empty-test", "an empty test split", "the test split is empty",
             x_test=np.zeros((0, 8, 8, 3), np.uint8), y_test=np.zeros(0, np.int64)),
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    cfg = load_config(None, [*SMALL_RUN, "search.epochs=2", "finetune.epochs=0", "name=done",
                             f"out_dir={out}"])
    run(cfg, out / "done", report=lambda _: None)
    from maskednas.pipeline import to_dict
    import yaml
    (out / "done" / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return out / "done"


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def cli(argv: list[str], monkeypatch) -> SystemExit | None:
    """train.py run as `python train.py ...` in this process (imported by nothing)."""
    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    monkeypatch.chdir(ROOT)
    try:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    except SystemExit as e:
        return e
    return None


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line_and_writes_nothing(case, finished_run, tmp_path, monkeypatch):
    if case.needs_no_gpu and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.yaml").write_text((finished_run / "config.yaml").read_text())
    ctx = Ctx(tmp_path, finished_run)
    argv = case.argv(ctx)
    new_run = not {"--resume", "--run"} & set(argv)
    argv = [*argv, *([f"out_dir={tmp_path / 'runs'}", "name=case"] if new_run and not any(
        a.startswith(("name=", "out_dir=")) for a in argv) else [])]
    before_run, before_tmp = tree(finished_run), tree(tmp_path)
    try:
        exit_ = cli(argv, monkeypatch)
    finally:
        for lock in ctx.held:
            lock.__exit__()
    if ctx.held:  # the case's own lock file went with its release
        before_tmp = {k: v for k, v in before_tmp.items() if not k.endswith(".run.lock")}
    assert exit_ is not None and isinstance(exit_.code, str), f"no error for {argv}"
    assert exit_.code.startswith("error: ") and "\n" not in exit_.code and "Traceback" not in exit_.code
    assert case.message in exit_.code, exit_.code
    assert tree(finished_run) == before_run and tree(tmp_path) == before_tmp  # nothing written
    assert not (tmp_path / "runs").exists() and not (ROOT / "escaped").exists()


def test_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py", "--debug", "search.w_lr=-1"])
    monkeypatch.chdir(ROOT)
    with pytest.raises(Exception, match="search.w_lr must be > 0"):
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")


def test_the_docs_table_lists_every_case_with_its_message():
    rows = {line.split("|")[1].strip(" `"): line for line in DOCS.read_text().splitlines()
            if line.startswith("| `")}
    assert set(rows) == {c.id for c in CASES} and len(CASES) >= 40
    for case in CASES:
        assert case.message.replace("|", "\\|") in rows[case.id], case.id


def test_the_weights_optimizer_is_the_one_configured(tmp_path):
    cfg = load_config(None, [*SMALL_RUN, "search.w_optimizer=adamw", "search.w_momentum=0.8"])
    searcher = prepare_search(cfg, tmp_path)
    assert isinstance(searcher.w_opt, torch.optim.AdamW)
    assert searcher.w_opt.defaults["betas"] == (0.8, 0.999)


def test_resume_applies_new_learning_rates_and_epochs(tmp_path):
    """After a non-finite loss the advice is 'lower the learning rates, then resume': the resumed
    search must train with the new rates (not the checkpoint's) and record what it uses."""
    cfg = load_config(None, [*SMALL_RUN, "search.epochs=2", "search.warmup_epochs=0"])
    first = prepare_search(cfg, tmp_path)
    first.run()
    lower = load_config(None, [*SMALL_RUN, "search.epochs=4", "search.warmup_epochs=0",
                               "search.w_lr=0.001", "search.w_lr_min=0.0001", "search.arch_lr=0.002"])
    resumed = prepare_search(lower, tmp_path)
    resumed.resume()
    assert [g["lr"] for g in resumed.architect.optimizer.param_groups] == [0.002, 0.002]
    resumed.run()
    w_lrs = [h["w_lr"] for h in resumed.history]
    assert max(w_lrs[:2]) > 0.01 and 0.0001 <= min(w_lrs[2:]) and max(w_lrs[2:]) <= 0.001
    assert resumed.epoch == 4


def exported_copy(finished_run: Path, tmp_path: Path) -> Path:
    import shutil
    shutil.copytree(finished_run / "export", tmp_path / "export")
    return tmp_path / "export"


def rewrite_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps(change(manifest)))


def test_a_manifest_entry_outside_the_folder_is_refused_not_opened(finished_run, tmp_path):
    folder = exported_copy(finished_run, tmp_path)
    rewrite_manifest(folder, lambda m: {**m, "../../../../etc/hostname": {"bytes": 1, "sha256": "0"}})
    for reader in (load, read_metrics):
        with pytest.raises(ExportError, match="entries must be plain file names inside the export"):
            reader(folder)


def test_read_metrics_checks_the_manifest(finished_run, tmp_path):
    folder = exported_copy(finished_run, tmp_path)
    metrics = json.loads((folder / METRICS).read_text())
    (folder / METRICS).write_text(json.dumps({**metrics, "test_acc": 1.0}))
    with pytest.raises(ExportError, match="metrics.json (has|does not match)"):
        read_metrics(folder)


@pytest.mark.parametrize("manifest,message", [
    ([1, 2], "must map file names to their size and sha256"),
    ({"arch.json": "big"}, "must be {\"bytes\": <int>, \"sha256\": <hex>}"),
])
def test_malformed_manifests_are_named(finished_run, tmp_path, manifest, message):
    folder = exported_copy(finished_run, tmp_path)
    if isinstance(manifest, dict):
        manifest = {**json.loads((folder / MANIFEST).read_text()), **manifest}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match=message.replace("{", "\\{").replace("}", "\\}").replace("|", "\\|")):
        load(folder)


def test_truncated_weights_with_a_matching_hash_are_named(finished_run, tmp_path):
    import hashlib
    folder = exported_copy(finished_run, tmp_path)
    data = (folder / WEIGHTS).read_bytes()[:100]
    (folder / WEIGHTS).write_bytes(data)
    rewrite_manifest(folder, lambda m: {**m, WEIGHTS: {"bytes": len(data),
                                                       "sha256": hashlib.sha256(data).hexdigest()}})
    with pytest.raises(ExportError, match="model.safetensors is not a readable safetensors file"):
        load(folder)


def test_an_export_never_replaces_a_folder_that_is_not_an_export(finished_run, tmp_path):
    from maskednas.export import save_export
    model = load(finished_run / "export")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="exists and is not an export folder"):
        save_export(tmp_path / "notes", model, {}, {}, onnx=False)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
