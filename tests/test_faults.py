"""Faults beyond bad flags, each injected: a full disk on every kind of write, two runs of one
name at once, a killed run's lock, data changed between a run and its --resume, a corrupted
cached latency table, a kill while a table is measured. In each, nothing already written is
lost and the error is one line naming the file."""
from __future__ import annotations

import contextlib
import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SMALL_RUN, maskednas_main, synthetic_table
from maskednas.common import WriteError
from maskednas.common.run_lock import LOCK_NAME, RunInUse, RunLock
from maskednas.latency import LatencyTable
from maskednas.latency.table import LatencyTableError
from maskednas.search.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FAST = [*SMALL_RUN, "search.epochs=2", "search.warmup_epochs=0", "finetune.epochs=0", "threads=1"]


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """While open, the kernel refuses to let any file of this process grow past `nbytes`
    (RLIMIT_FSIZE: the write fails with EFBIG, as one fails with ENOSPC on a full disk)."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error, not the signal's kill
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def refused_from_call(monkeypatch, owner, name: str, call: int, nbytes: int = 4096) -> None:
    """`owner.name` runs as it is, but from its `call`-th call on under `file_size_limit`."""
    real, calls = getattr(owner, name), []

    def limited(*args, **kwargs):
        calls.append(1)
        if len(calls) < call:
            return real(*args, **kwargs)
        with file_size_limit(nbytes):
            return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, limited)


def command(argv: list[str], monkeypatch) -> str | None:
    """`maskednas run ...` in this process: its one-line error, or None when it succeeded."""
    monkeypatch.chdir(ROOT)
    try:
        maskednas_main(["run", *argv])
    except SystemExit as e:
        assert isinstance(e.code, str) and "\n" not in e.code, e.code
        return e.code
    return None


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if ".tmp" in p.name or p.name == LOCK_NAME]


def npz_run(out: Path, name: str = "done") -> Path:
    """A finished tiny run with an export, on an .npz copy of the digits of its own."""
    from maskednas.datasource import load_dataset

    d = load_dataset("digits")
    np.savez(out / "digits.npz", x_train=d.x_train.permute(0, 2, 3, 1).numpy(), y_train=d.y_train.numpy(),
             x_test=d.x_test.permute(0, 2, 3, 1).numpy(), y_test=d.y_test.numpy())
    mp = pytest.MonkeyPatch()
    try:
        assert command([*FAST, "data.name=npz", f"data.path={out / 'digits.npz'}",
                        f"out_dir={out}", f"name={name}"], mp) is None
    finally:
        mp.undo()
    return out / name


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return npz_run(tmp_path_factory.mktemp("finished"))


def copy_of(run: Path, tmp_path: Path) -> Path:
    import shutil
    shutil.copytree(run, tmp_path / run.name)
    return tmp_path / run.name


# -- a full disk ---------------------------------------------------------------------------------

def test_a_refused_write_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from maskednas.search import loop
    refused_from_call(monkeypatch, loop, "save_checkpoint", call=2)  # epoch 1's is written, epoch 2's not
    error = command([*FAST, f"out_dir={tmp_path}", "name=r"], monkeypatch)
    checkpoint = tmp_path / "r" / "search.pt"
    assert error == (f"error: cannot write {checkpoint}: File too large; the previous file is "
                     f"kept"), error
    assert load_checkpoint(checkpoint, "search")["epoch"] == 1
    assert leftovers(tmp_path) == []


def test_a_refused_write_keeps_the_previous_export(finished, tmp_path, monkeypatch):
    from maskednas.pipeline import stages
    run = copy_of(finished, tmp_path)
    before = tree(run / "export")
    refused_from_call(monkeypatch, stages, "save_export", call=1)
    error = command(["--run", str(run), "--stages", "derive,export"], monkeypatch)
    assert error == (f"error: cannot write the export {run / 'export'} (model.safetensors): File "
                     f"too large; the previous export in {run / 'export'} is kept"), error
    assert tree(run / "export") == before and leftovers(run) == []


def test_a_refused_write_keeps_the_latency_table(tmp_net_table, tmp_path):
    path = tmp_path / "table.json"
    tmp_net_table.save(path)
    before = path.read_bytes()
    with file_size_limit(100), pytest.raises(WriteError) as refused:
        tmp_net_table.save(path)
    assert str(refused.value) == f"cannot write {path}: File too large; the previous file is kept"
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["table.json"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # TensorBoard's writer thread
def test_a_refused_write_stops_tensorboard_with_the_folder_named(tiny_net, tmp_path):
    from maskednas.search.tensorboard_log import SearchLogger

    logger = SearchLogger(tmp_path, tiny_net, {"macs": 1e5})
    logger.scalars({"loss/train": 1.0}, 0)
    logger.writer.flush()
    before = tree(tmp_path)
    (events,) = tmp_path.glob("events.out.tfevents.*")
    with file_size_limit(events.stat().st_size), pytest.raises(WriteError) as refused:
        logger.architecture(tiny_net, 1, {"expected_macs": 1.0})
    assert str(refused.value) == (f"cannot write {tmp_path}: File too large; the events written "
                                  f"so far are kept")
    assert tree(tmp_path) == before  # the events already on disk are as they were


def test_a_kill_during_a_write_leaves_the_previous_file(tmp_path):
    target = tmp_path / "table.json"
    target.write_bytes(b"old")
    code = ("import sys, time\n"
            "from maskednas.common import atomic_write\n"
            "def slow(tmp):\n"
            "    f = open(tmp, 'wb'); f.write(b'new' * 1000); f.flush()\n"
            "    print('half', flush=True); time.sleep(60)\n"
            "atomic_write(sys.argv[1], slow)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "half"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert target.read_bytes() == b"old"
    assert [f.name for f in tmp_path.iterdir() if f != target][0].startswith(".table.json.")


@pytest.fixture
def tmp_net_table(tiny_net) -> LatencyTable:
    return synthetic_table(tiny_net)


# -- two runs of one name ------------------------------------------------------------------------

HOLD = ("import sys, time\n"
        "from maskednas.common.run_lock import RunLock\n"
        "with RunLock(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n")


def holding(run_dir: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_run_of_a_live_name_is_refused_and_a_killed_run_frees_it(tmp_path, monkeypatch):
    live = tmp_path / "r"
    live.mkdir()
    holder = holding(live)
    def no_work(cfg):
        raise AssertionError("the data was loaded although the run's folder is in use")
    monkeypatch.setattr("maskednas.cli.load_data", no_work)  # refused before any work
    try:
        error = command([*FAST, f"out_dir={tmp_path}", "name=r"], monkeypatch)
        assert error == (f"error: {live} is in use by a live run (pid {holder.pid}); wait for it to "
                         f"finish, or choose another name=..."), error
        assert sorted(p.name for p in live.iterdir()) == [LOCK_NAME]  # it wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock(live):  # the kernel dropped the dead holder's lock
        with pytest.raises(RunInUse):
            RunLock(live).__enter__()
    assert not (live / LOCK_NAME).exists()


# -- the data changed before --resume -------------------------------------------------------------

def test_resume_refuses_changed_data_unless_told(tmp_path, monkeypatch):
    run = npz_run(tmp_path, "r")
    data_file = tmp_path / "digits.npz"
    started = load_checkpoint(run / "search.pt", "search")["data_sha256"]
    with np.load(data_file) as f:
        arrays = dict(f)
    arrays["y_train"][:5] = (arrays["y_train"][:5] + 1) % 10  # five labels corrected in place
    np.savez(data_file, **arrays)
    before = tree(run)
    error = command(["--resume", str(run), "search.epochs=3"], monkeypatch)
    assert error.startswith(f"error: the data changed since {run}'s search started: {data_file}"), error
    assert "--accept-changed-data" in error and tree(run) == before
    assert command(["--resume", str(run), "search.epochs=3", "--accept-changed-data",
                    "--stages", "search", "data.num_classes=10"], monkeypatch) is None
    state = load_checkpoint(run / "search.pt", "search")
    assert state["epoch"] == 3 and state["data_sha256"] != started


# -- latency tables -------------------------------------------------------------------------------

def test_a_corrupted_cached_table_is_measured_again_never_read(tmp_net_table, tmp_path):
    path = tmp_path / "table.json"
    tmp_net_table.save(path)
    data = json.loads(path.read_text())
    key = next(iter(data["entries"]))
    data["entries"][key]["ms"] = json.loads(json.dumps(data["entries"][key]["ms"]).replace("0.", "9.", 1))
    path.write_text(json.dumps(data))  # the numbers changed, the file still parses
    with pytest.raises(LatencyTableError, match="is corrupted: its content does not match the sha256"):
        LatencyTable.load(path)
    data.pop("sha256")
    path.write_text(json.dumps(data))
    with pytest.raises(LatencyTableError, match="has no sha256"):
        LatencyTable.load(path, require_digest=True)


def test_a_corrupted_cache_file_is_replaced_by_a_new_measurement(tmp_path):
    """Through the cache: a garbled cached table is reported, measured again and rewritten."""
    out = subprocess.run([sys.executable, "-m", "maskednas", "latency", "--config", "digits",
                          f"latency.cache_dir={tmp_path}", "latency.grid_points=2",
                          "latency.repeats=2", "latency.rounds=1", "threads=1", "macro.stages=[{channels: 8, layers: 1, stride: 1}]"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (cached,) = tmp_path.glob("*.json")
    good = LatencyTable.load(cached, require_digest=True)
    cached.write_bytes(cached.read_bytes()[:-40] + b"garbled" * 5)
    again = subprocess.run(out.args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "is not a readable latency table" in again.stdout and "measuring again" in again.stdout
    fresh = LatencyTable.load(cached, require_digest=True)
    assert fresh.entries.keys() == good.entries.keys()


def test_a_kill_while_a_table_is_measured_leaves_no_table(tmp_path):
    p = subprocess.Popen([sys.executable, "-u", "-m", "maskednas", "latency", "--config", "digits",
                          f"latency.cache_dir={tmp_path}", "threads=1"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = p.stdout.readline()
    while line and "measuring" not in line:
        line = p.stdout.readline()
    assert "measuring" in line, "the table was not measured"
    time.sleep(2.0)  # well inside the measurement (tens of seconds on the digits space)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert list(tmp_path.iterdir()) == []


def test_a_missing_run_is_named_with_the_runs_that_exist(tmp_path, monkeypatch):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text("{}")
    error = command(["--resume", str(tmp_path / "none")], monkeypatch)
    assert error == f"error: no run 'none' exists; runs in {tmp_path}: a, b", error

