"""Soak test: does a long search leak memory, slow down or fill the disk?

    python -m benchmarks.soak --space macro --minutes 30   # configs/digits.yaml
    python -m benchmarks.soak --space model --minutes 30   # configs/prune_model.yaml (ResNet-18)
    python -m benchmarks.soak --report                     # soak.md from the parts measured

Runs `train.py --stages search` in a subprocess exactly as a user would (one thread, one epoch of
warm-up, then architecture steps; as many epochs as fit) and watches it from outside: every
0.1 s its resident memory (/proc/<pid>/status VmRSS), and at every epoch's checkpoint (the
search.pt rename) the epoch's wall time, the peak RSS seen during it and the run folder's size.
After `--minutes` the search is interrupted as Ctrl-C does. Writes
benchmarks/results/soak-<space>.json, and soak.md from every part present.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SPACES = {"macro": "digits", "model": "prune_model"}
# after the first epoch (and its warm-up), RSS and epoch time must stay within this of epoch 2's
FLAT = 0.05


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def folder_bytes(folder: Path) -> dict[str, int]:
    sizes = {}
    for p in folder.rglob("*"):
        try:
            if p.is_file():
                sizes[p.name if p.parent == folder else str(p.relative_to(folder))] = p.stat().st_size
        except FileNotFoundError:  # a temporary file renamed meanwhile
            continue
    return {"total": sum(sizes.values()), "files": len(sizes),
            "checkpoints": sum(b for n, b in sizes.items() if n.endswith(".pt")),
            "events": sum(b for n, b in sizes.items() if n.startswith("events."))}


def soak(space: str, minutes: float) -> dict:
    name = f"soak-{space}"
    run_dir = ROOT / "runs" / "bench" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    # more epochs than fit: the cosine and temperature schedules hardly move, which is what a
    # soak wants (the same work every epoch); the run is interrupted after `minutes`
    argv = [sys.executable, "train.py", "--config", SPACES[space], "--stages", "search",
            f"name={name}", "out_dir=runs/bench", "threads=1", "search.epochs=100000",
            "search.warmup_epochs=1"]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = run_dir.parent / f"{name}.log"
    log = open(log_path, "w")
    # Ctrl-C's default action in the child: a shell's background job inherits SIGINT ignored
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    start = last = time.perf_counter()
    checkpoint, seen, peak, epochs, interrupted = run_dir / "search.pt", None, 0, [], False
    try:
        while proc.poll() is None and time.perf_counter() - start < minutes * 60:
            time.sleep(0.1)  # epochs take seconds: a tenth of one keeps their times to ~1%
            peak = max(peak, rss_kib(proc.pid) or 0)
            stamp = checkpoint.stat().st_mtime_ns if checkpoint.is_file() else None
            if stamp is not None and stamp != seen:
                now = time.perf_counter()
                seen = stamp
                epochs.append({"epoch": len(epochs) + 1, "end_s": now - start, "epoch_s": now - last,
                               "peak_rss_kib": peak, "folder": folder_bytes(run_dir)})
                last, peak = now, 0
    finally:
        if proc.poll() is None:
            interrupted = True
            proc.send_signal(signal.SIGINT)  # as Ctrl-C: the last checkpoint is kept
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
    if not interrupted or len(epochs) < 7:
        raise SystemExit(f"{name}: the search ended by itself ({proc.returncode}) after "
                         f"{len(epochs)} epochs, before the soak did; see {log_path}")
    stopped_cleanly = "interrupted; continue with --resume" in log_path.read_text()
    state = torch.load(checkpoint, weights_only=True, map_location="cpu")
    return {"space": space, "config": SPACES[space], "minutes": minutes, "argv": argv[1:],
            "steps_per_epoch": state["step"] // state["epoch"], "epochs": epochs,
            "stopped_cleanly": stopped_cleanly,
            "machine": {"python": platform.python_version(), "torch": torch.__version__}}


def summary(r: dict) -> dict:
    """Epoch 2 (the first after warm-up, whose arch steps start then) against the last five."""
    e = r["epochs"]
    tail = e[-5:]
    base_s, base_rss = e[1]["epoch_s"], max(e[1]["peak_rss_kib"], 1)
    last_s = statistics.median(x["epoch_s"] for x in tail)
    last_rss = max(x["peak_rss_kib"] for x in tail)
    sizes = [x["folder"]["checkpoints"] for x in e]
    # less at the mercy of one epoch on a shared machine: a least-squares line through every
    # epoch's time from epoch 2 on (its value at the last epoch over that at epoch 2), and the
    # median epoch of the last five minutes over that of the first five
    t, s = [x["end_s"] for x in e[1:]], [x["epoch_s"] for x in e[1:]]
    mt, ms = statistics.fmean(t), statistics.fmean(s)
    slope = sum((a - mt) * (b - ms) for a, b in zip(t, s)) / sum((a - mt) ** 2 for a in t)
    fitted = lambda at: ms + slope * (at - mt)
    window = lambda keep: statistics.median(x["epoch_s"] for x in e[1:] if keep(x["end_s"]))
    first5, last5 = window(lambda at: at <= t[0] + 300), window(lambda at: at >= t[-1] - 300)
    return {"epochs": len(e), "base_epoch_s": base_s, "last_epoch_s": last_s,
            "epoch_time_change": last_s / base_s - 1,
            "epoch_time_trend": fitted(t[-1]) / fitted(t[0]) - 1,
            "first_minutes_epoch_s": first5, "last_minutes_epoch_s": last5,
            "minutes_change": last5 / first5 - 1, "base_rss_mib": base_rss / 1024,
            "last_rss_mib": last_rss / 1024, "rss_change": last_rss / base_rss - 1,
            "checkpoint_mib": sizes[-1] / 2**20, "checkpoint_growth": sizes[-1] / sizes[1] - 1,
            "events_mib": e[-1]["folder"]["events"] / 2**20, "files": e[-1]["folder"]["files"]}


def report() -> str:
    lines = ["# Soak: a long search's memory, speed and disk use", "",
             "Command: `python -m benchmarks.soak --space macro|model --minutes 30`. One thread, "
             "`train.py --stages search`, one warm-up epoch; RSS sampled every 0.1 s from "
             "outside the process. `epoch 2`: the first epoch with architecture steps; `last`: "
             "the median epoch time and the largest RSS of the last five epochs. `trend`: a "
             "least-squares line through every epoch's time from epoch 2, its value at the last "
             "epoch over its value at epoch 2. `5 min`: the median epoch time of the last five "
             "minutes over that of the first five after epoch 1.", "",
             "| space | epochs (steps each) | epoch 2 time | last epochs' time | change | trend | "
             "first 5 min | last 5 min | change | RSS epoch 2 | RSS last | change | checkpoint | "
             "its growth | TensorBoard events | files |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for space in SPACES:
        path = RESULTS / f"soak-{space}.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        s = summary(r)
        lines.append(f"| {space} (`{r['config']}`, {r['minutes']:g} min) | {s['epochs']} "
                     f"({r['steps_per_epoch']}) | {s['base_epoch_s']:.2f} s | "
                     f"{s['last_epoch_s']:.2f} s | {s['epoch_time_change']:+.1%} | "
                     f"{s['epoch_time_trend']:+.1%} | {s['first_minutes_epoch_s']:.2f} s | "
                     f"{s['last_minutes_epoch_s']:.2f} s | {s['minutes_change']:+.1%} | "
                     f"{s['base_rss_mib']:.0f} MiB | {s['last_rss_mib']:.0f} MiB | "
                     f"{s['rss_change']:+.1%} | {s['checkpoint_mib']:.2f} MiB | "
                     f"{s['checkpoint_growth']:+.1%} | {s['events_mib']:.2f} MiB | {s['files']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", choices=sorted(SPACES))
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--report", action="store_true", help="only write soak.md from the parts present")
    args = p.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.space:
        result = soak(args.space, args.minutes)
        (RESULTS / f"soak-{args.space}.json").write_text(json.dumps(result, indent=2))
        s = summary(result)
        print(json.dumps(s, indent=2))
        if abs(s["epoch_time_change"]) > FLAT or s["rss_change"] > FLAT:
            print(f"not flat: epoch time {s['epoch_time_change']:+.1%}, RSS {s['rss_change']:+.1%} "
                  f"(goal: within {FLAT:.0%})")
    (RESULTS / "soak.md").write_text(report())
    print(report())


if __name__ == "__main__":
    main()
