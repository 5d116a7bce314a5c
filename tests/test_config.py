"""Bad input fails early with a message that says what was wrong and what is allowed."""
import pytest
import torch

from maskednas.pipeline.config import ConfigError, load_config
from maskednas.search.penalty import UnreachableTargetError
from maskednas.pipeline.setup import prepare_search
from maskednas.datasource import load_dataset
from conftest import small_config


@pytest.mark.parametrize("override,message", [
    ("search.epoch=3", "unknown config key 'search.epoch'; valid keys in 'search': epochs, "),
    ("serch.epochs=3", "unknown config key 'serch'; valid keys at the top level: name, "),
    ("search.epochs=three", "search.epochs must be int, got 'three'"),
    ("search.order=3", "search.order must be 1 (first order) or 2"),
    ("search.warmup_epochs=50", "search.warmup_epochs must be in [0, search.epochs="),
    ("search.targets.macs.fraction=1.5", "search.targets.macs.fraction must be in (0, 1]"),
    ("search.target.estimator=guess", "must be one of discrete, expected, got 'guess'"),
    ("search.arch_fraction=1", "search.arch_fraction must be in (0, 1)"),
    ("data.val_fraction=0.3", "config key 'data.val_fraction' is now 'search.arch_fraction' "
                              "(write search.arch_fraction=0.3 with search.regime=bilevel"),
    ("search.arch_fraction=0.3", "with search.regime=single_level the architecture steps on all"),
    ("macro.stages=[{channels: 8, layers: 1, stride: 4}]", "stride 1 or 2"),
    ("macro.stages=[{channels: 8, depth: 1}]", "unknown config key 'macro.stages[0].depth'"),
    ("search.epochs", "must look like key=value"),
])
def test_bad_config_values(override, message):
    with pytest.raises((ConfigError, ValueError)) as e:
        load_config("configs/digits.yaml", [override])
    assert message in str(e.value)


def test_scientific_notation_is_a_number():
    cfg = load_config(None, ["search.targets.macs.value=3e5", "search.w_lr=1e-3"])
    assert cfg.search.targets["macs"].value == 300000.0 and cfg.search.w_lr == 0.001
    with pytest.raises(ConfigError, match="search.w_lr must be float, got 'fast'"):
        load_config(None, ["search.w_lr=fast"])


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(KeyError, match="unknown op 'conv_9x9'; registered: .*sep_conv_3x3"):
        load_config(None, ["macro.candidates=[conv_9x9]"])
    with pytest.raises(KeyError, match="unknown dataset 'mnist'; registered: .*cifar10.*digits"):
        load_dataset("mnist")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/nope.yaml")


def test_data_errors_say_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("npz", str(tmp_path / "missing.npz"))
    with pytest.raises(FileNotFoundError, match="data.download=true"):
        load_dataset("cifar10", str(tmp_path))  # never downloads unless asked
    with pytest.raises(FileNotFoundError, match="train/ and val/"):
        load_dataset("imagefolder", str(tmp_path))


def test_unreachable_target_fails_before_training(tmp_path):
    cfg = small_config(tmp_path, "search.targets.macs.value=10", "search.targets.macs.fraction=null")
    with pytest.raises(UnreachableTargetError, match="smallest network this search space can reach"):
        prepare_search(cfg, tmp_path)
    assert not (tmp_path / "search.pt").exists()


def test_a_saved_run_with_the_earlier_target_keys_reads_as_the_new_form():
    from maskednas.pipeline.config import RunConfig, from_dict, to_dict, upgrade_moved_keys
    saved = to_dict(load_config("digits"))
    saved["search"].pop("targets")
    saved["search"]["target"].update(macs=None, macs_fraction=0.4, params=None, params_fraction=None,
                                     latency_ms=None, latency_fraction=None)
    saved["derive"].pop("target")
    saved["derive"].update(macs=2e5, latency_ms=None)
    saved["search"].pop("regime")
    saved["search"]["weight_data"] = "all"
    moved = upgrade_moved_keys(saved)
    assert moved == ["search.target.macs_fraction -> search.targets.macs.fraction",
                     "derive.macs -> derive.target.macs", "search.weight_data -> search.regime"]
    cfg = from_dict(RunConfig, saved)
    assert list(cfg.search.targets) == ["macs"] and cfg.search.targets["macs"].fraction == 0.4
    assert cfg.derive.target == {"macs": 2e5}
    assert cfg.search.regime == "single_level"  # "all": the architecture stepped on training data


def test_the_default_run_uses_one_torch_thread():
    """Two threads on two cores run the digits search 2.4x slower beside one busy process, one
    thread 1.2x (benchmarks/contention.py); the run applies the config's count."""
    from maskednas.pipeline.setup import apply_threads

    cfg = load_config("digits")
    assert cfg.threads == 1
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        apply_threads(cfg)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
