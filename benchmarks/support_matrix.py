"""Which networks the `model` space prunes: for each, the channel groups and residual blocks
found, and with random weights and hard masks at about half the MACs, the gap between the
hard-masked network and the physically pruned one, the analytic MACs against fvcore's count
of the pruned model, and an export -> load round trip.

    python -m benchmarks.support_matrix                      # the README's table (MODELS)
    python -m benchmarks.support_matrix --all --part torchvision --jobs 2
    python -m benchmarks.support_matrix --all --part timm --jobs 2  # both parts merge into one file
    python -m benchmarks.support_matrix --all --part timm --only timm:cspresnet50  # recheck one

`--all` checks every torchvision classification model and the smallest model (by parameters)
of every timm family (a module of timm.models), each in its own process with a time and a
memory limit, and writes benchmarks/results/support-matrix-all.{json,md}.
tests/test_user_model.py runs the same checks (`check`) on every model listed in MODELS.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.soak import rss_kib
from maskednas.derive import derive, slim
from maskednas.export import save_export
from maskednas.export.flops import fvcore_report
from maskednas.export.model_source import build_source
from maskednas.supernet.user_model import ModelSpaceConfig, UserModel

MODELS = {  # source -> input size (the CIFAR ResNet is built for 32x32)
    **{f"torchvision:{n}": 64 for n in (
        "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
        "regnet_y_400mf", "resnext50_32x4d", "densenet121", "convnext_tiny", "shufflenet_v2_x0_5")},
    **{f"timm:{n}": 64 for n in (
        "resnet26d", "efficientnet_lite0", "mobilenetv3_large_100", "convnext_atto", "regnetx_002")},
    "benchmarks.cifar_resnet:resnet20": 32,
    "benchmarks.vit:vit_micro": 32, "benchmarks.vit:vit_micro_unfused": 32,
}


@torch.no_grad()
def randomize(net: UserModel, generator: torch.Generator) -> None:
    """Every vector parameter (norm scales and shifts, layer scales, GRN, biases) and norm
    statistic away from its identity default, mask logits and keep/skip logits at random: a
    slimmer that took the wrong channels, or a block the wrong way, shows."""
    for name, p in net.model.named_parameters():
        if sum(d > 1 for d in p.shape) <= 1:  # (C,), or (C, 1, 1) as torchvision's layer scale
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2 if name.endswith("bias")
                    else torch.rand(p.shape, generator=generator) + 0.5)
    for name, b in net.model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(torch.randn(b.shape, generator=generator) * 0.1)
        elif name.endswith("running_var"):
            b.copy_(torch.rand(b.shape, generator=generator) + 0.5)
    for mask in net.masks.values():
        mask.logits.copy_(torch.randn(mask.logits.shape, generator=generator))
    for alpha in net.alphas.values():  # about one block in four skipped
        alpha.copy_(torch.tensor([1.0, 0.0]) if torch.rand((), generator=generator) < 0.75
                    else torch.tensor([0.0, 1.0]))


def check(source: str, size: int, seed: int = 0, export_to: Path | None = None,
          stages: list[str] | None = None) -> dict:
    """Build, randomize, derive at half the MACs, slim (and export to `export_to`, without
    ONNX); the figures the matrix reports, the pruned model, and a batch with the hard-masked
    network's outputs on it. `stages` gets the name of each step as it starts."""
    stage = (stages if stages is not None else []).append
    start = time.perf_counter()
    stage("build")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = UserModel(ModelSpaceConfig(source=source), 3, 10, size)
    build_s = time.perf_counter() - start
    left_unpruned = [str(w.message) for w in caught if "left unpruned" in str(w.message)]
    randomize(net, torch.Generator().manual_seed(seed))
    net.eval()
    dense = net.dense_architecture().cost().macs
    stage("derive")
    derivation = derive(net, 0.5 * dense)
    stage("slim")
    model = slim(net, derivation).eval()
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad(), net.hard_masked(derivation.ops, derivation.keep):
        reference = net(x)
        stage("run pruned")
        gap = float((model(x) - reference).abs().max())
    stage("count")
    if export_to is None:
        fvcore_macs, fvcore_params, _ = fvcore_report(model, torch.zeros(1, 3, size, size))
    else:  # the export counts them on the model it writes
        metrics = save_export(export_to, model, {}, {}, onnx=False)
        fvcore_macs, fvcore_params = metrics["fvcore_flops"], metrics["fvcore_params"]
    return {"source": source, "groups": len(net.masks), "blocks": len(net.blocks),
            "removed": len(derivation.arch.removed_choices()), "skipped_groups": len(net.groups.skipped),
            "left_unpruned": left_unpruned, "dense_macs": dense, "macs": derivation.arch.macs,
            "params": derivation.arch.params, "fvcore_macs": fvcore_macs,
            "fvcore_params": fvcore_params, "unused_params": sum(net.trace.unused.values()), "gap": gap, "scale": float(reference.abs().max()),
            "build_s": build_s, "seconds": time.perf_counter() - start, "model": model, "input": x,
            "reference": reference}


def exact_cost(r: dict) -> bool:
    """The analytic MACs and params are fvcore's count of the pruned network (less the
    parameters of modules its forward never runs)."""
    return (r["macs"], r["params"]) == (r["fvcore_macs"], r["fvcore_params"] - r["unused_params"])


def main() -> None:
    print("| source | groups | blocks (removed) | groups left whole | MACs pruned / dense | "
          "analytic == fvcore | max gap / output scale |")
    print("|---|---|---|---|---|---|---|")
    for source, size in MODELS.items():
        r = check(source, size)
        print(f"| {source} | {r['groups']} | {r['blocks']} ({r['removed']}) | "
              f"{r['skipped_groups']} | {r['macs'] / r['dense_macs']:.3f} | "
              f"{exact_cost(r)} | "
              f"{r['gap'] / r['scale']:.1e} |", flush=True)


# -- every model: --all ------------------------------------------------------------------------
RESULTS = ROOT / "benchmarks" / "results"
TIMEOUT_S, MEMORY_GB = 240, 12
WHOLE_FRACTION = 0.25  # a passing network leaves at most this share of its channel groups whole
TORCHVISION_SIZES = {"inception_v3": 96}  # models needing more than 64x64 (others: 224 if fixed)


def torchvision_models() -> dict[str, int]:
    import torchvision
    names = torchvision.models.list_models(module=torchvision.models)
    fixed = lambda n: n.startswith(("vit_", "maxvit"))  # position embeddings of one size
    return {f"torchvision:{n}": TORCHVISION_SIZES.get(n, 224 if fixed(n) else 64) for n in names}


def timm_models(skipped: dict[str, str] | None = None) -> dict[str, int]:
    """The smallest model of each timm family (a module of timm.models), by parameter count
    (built on the meta device); timm's own tiny `test_*` networks are left out. A family none
    of whose models builds goes to `skipped` with the first error."""
    import timm
    out = {}
    for family in timm.list_modules():
        sizes, errors = {}, []
        for name in timm.list_models(module=family, exclude_filters="test_*"):
            try:
                with torch.device("meta"), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    sizes[name] = sum(p.numel() for p in timm.create_model(name, num_classes=10).parameters())
            except Exception as e:  # a model that does not build here is not its family's smallest
                errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        if not sizes and skipped is not None:
            skipped[family] = errors[0] if errors else "no models"
        if sizes:
            name = min(sizes, key=sizes.get)
            cfg = timm.get_pretrained_cfg(name)
            fixed = cfg is not None and getattr(cfg, "fixed_input_size", False)
            out[f"timm:{name}"] = cfg.input_size[-1] if fixed else 64
    return out


def default_size(source: str) -> int:
    """The input size the model is made for (timm's config; 224 for torchvision)."""
    lib, name = source.split(":", 1)
    if lib == "timm":
        import timm
        cfg = timm.get_pretrained_cfg(name)
        return cfg.input_size[-1] if cfg is not None else 224
    return 224


def verdict(r: dict) -> str | None:
    """Why a checked network does not pass (None: it passes)."""
    if not r["gap"] <= 1e-4 * max(r["scale"], 1.0):
        return f"wrong: the pruned network differs from the hard-masked one by {r['gap'] / r['scale']:.1e} of the output scale"
    if not exact_cost(r):
        return "wrong: the analytic MACs or params differ from fvcore's count of the pruned network"
    if abs(r["macs"] / r["dense_macs"] - 0.5) > 0.03:
        return f"barely pruned: half the MACs not reached ({r['macs'] / r['dense_macs']:.3f} of dense)"
    total = r["groups"] + r["skipped_groups"]
    if r["skipped_groups"] > WHOLE_FRACTION * total:
        return f"mostly whole: {r['skipped_groups']} of {total} channel groups left whole ({r['left_unpruned'][0][:300]})"
    return None


def check_one(source: str, size: int) -> dict:
    """`check`, reduced to what the results file keeps, with the step a failure stopped at."""
    stages: list[str] = []
    try:
        r = check(source, size, stages=stages)
    except Exception as e:
        return {"status": "fail", "stage": stages[-1] if stages else "build",
                "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:400] if str(e) else ''}"}
    why = verdict(r)
    kept = {k: v for k, v in r.items() if isinstance(v, (int, float, str))}
    return {**kept, "status": "fail" if why else "pass", "stage": "verdict" if why else "",
            "reason": why or "", "left_unpruned": r["left_unpruned"][:3]}


class _ProductsOfActivations(TorchFunctionMode):
    """Sees a matrix product of two activations (tensors that depend on the input), as token
    attention computes `q @ k^T` and `attention @ v`."""
    PRODUCTS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm,
                torch.Tensor.bmm, torch.baddbmm, torch.einsum}
    ATTENTIONS = {F.scaled_dot_product_attention, F.multi_head_attention_forward}  # one call each

    def __init__(self) -> None:
        super().__init__()
        self.found = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.ATTENTIONS:
            self.found = True
        elif func in self.PRODUCTS:
            flat = [t for a in args for t in (a if isinstance(a, (list, tuple)) else [a])]
            self.found |= sum(isinstance(t, torch.Tensor) and t.requires_grad for t in flat) >= 2
        return func(*args, **(kwargs or {}))


def uses_attention(model: torch.nn.Module, size: int) -> bool:
    """Whether the network has token attention (the transformer work's): a product of two
    activations in its forward, with its parameters frozen so that only what the input reaches
    requires grad. SE, ECA, CBAM and SK gates multiply elementwise and are not it."""
    trained = [p for p in model.parameters() if p.requires_grad]
    watch = _ProductsOfActivations()
    try:
        for p in trained:
            p.requires_grad_(False)
        with watch, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.eval()(torch.zeros(1, 3, size, size, requires_grad=True))
    finally:
        for p in trained:
            p.requires_grad_(True)
    return watch.found


def run_isolated(source: str, size: int) -> dict:
    """`check_one` in a child process, killed past TIMEOUT_S or MEMORY_GB of resident memory."""
    import tempfile
    start, killed = time.perf_counter(), None
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, "-m", "benchmarks.support_matrix", "--one",
                                  source, "--size", str(size)], cwd=ROOT, stdout=out, stderr=err,
                                 text=True)
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.5)
            if killed is None and time.perf_counter() - start > TIMEOUT_S:
                killed = f"over {TIMEOUT_S} s"
            elif killed is None and (rss_kib(child.pid) or 0) / 2**20 > MEMORY_GB:
                killed = f"over {MEMORY_GB} GB of memory"
            if killed:  # not child.kill(): Popen reaps it first, and wait4 would find no child
                os.kill(child.pid, signal.SIGKILL)
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        lines, last_error = out.read().strip().splitlines(), err.read().strip().splitlines()[-1:]
    reports = [json.loads(line) for line in lines if line.startswith("{")]
    if reports and "status" in reports[-1]:  # finished, even if the limit struck while it exited
        r = reports[-1]
    elif killed:
        r = {"status": "fail", "stage": "limit", "reason": killed}
    else:
        r = {"status": "fail", "stage": "crash", "reason": f"the process exited with "
             f"{child.returncode}: {last_error[0][:300] if last_error else 'no message'}"}
    r.setdefault("attention", reports[0].get("attention") if reports else None)
    return {"source": source, "size": size, **r, "wall_s": round(time.perf_counter() - start, 1),
            "peak_gb": round(usage.ru_maxrss / 2**20, 2)}  # Linux reports KiB


def _attention_of(source: str, size: int) -> bool | None:
    """`uses_attention` of the network (None: it does not build or run at this size)."""
    try:
        return uses_attention(build_source(source, 10, 3), size)
    except Exception:
        return None


def _check_at_its_size(source: str, size: int) -> dict:
    r = run_isolated(source, size)
    does_not_run = r.get("attention", False) is None  # its forward failed at this size
    fails_here = does_not_run or r["reason"].startswith(("RuntimeError", "AssertionError"))
    if r["stage"] == "build" and fails_here and size < default_size(source):
        # a forward that fails at 64x64 (feature maps shrunk to nothing, a position embedding
        # or a block size asserted, an image size refused): its own size
        r = {**run_isolated(source, default_size(source)), "at_64": r["reason"]}
    return r


def run_all(part: str, only: list[str] | None = None, jobs: int = 1) -> None:
    """Every model of `part` (or those in `only`, rechecked at the size they ran at), `jobs`
    child processes at a time, each row written into the results file as it finishes."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    path = RESULTS / "support-matrix-all.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    rows = results.setdefault(part, {})
    if only:
        unknown = [s for s in only if not s.startswith(f"{part}:")]
        if unknown:
            raise SystemExit(f"--only {unknown[0]}: not a {part} model (allowed: {part}:NAME)")
        models = {s: rows.get(s, {}).get("size", 64) for s in only}
    else:
        skipped: dict[str, str] = {}
        models = torchvision_models() if part == "torchvision" else timm_models(skipped)
        if skipped:
            results[f"{part} families skipped"] = skipped
    before = list(rows)  # rows of an earlier run stay where they were
    with ThreadPoolExecutor(jobs) as pool:  # threads only wait on the child processes
        running = {pool.submit(_check_at_its_size, s, size): s for s, size in models.items()}
        for done in as_completed(running):
            source, r = running[done], done.result()
            rows[source] = r
            print(f"{source}: {r['status']} {r.get('reason', '')[:160]} ({r['wall_s']} s)", flush=True)
            ordered = {s: rows[s] for s in [*before, *models] if s in rows}  # the models' order
            results[part] = rows = ordered
            path.write_text(json.dumps(results, indent=1))  # each model kept as it finishes
    (RESULTS / "support-matrix-all.md").write_text(matrix_markdown(results))


def matrix_markdown(results: dict) -> str:
    """Per part: the counts, every failure with the step it stopped at and why, the passing
    networks, and the largest builds' time and memory."""
    lines = ["# Support matrix: every torchvision classifier, the smallest model of every timm family",
             "", "Command: `python -m benchmarks.support_matrix --all --part torchvision|timm`. Random "
             "weights, norms, scales and masks; derived at half the MACs; each model in its own "
             f"process (at most {TIMEOUT_S} s, {MEMORY_GB} GB). Pass: pruned == hard-masked within "
             "1e-4 of the output scale, analytic MACs and params == fvcore, half the MACs reached, "
             f"at most {WHOLE_FRACTION:.0%} of the channel groups left whole.", ""]
    for part, rows in results.items():
        if part.endswith("families skipped"):
            lines += [f"{part.capitalize()} (no model of theirs builds here): " + "; ".join(
                f"{family} ({why})" for family, why in rows.items()), ""]
            continue
        count = lambda attention: (
            sum(r["status"] == "pass" for r in rows.values() if r.get("attention") is attention),
            sum(r.get("attention") is attention for r in rows.values()))
        passed = [s for s, r in rows.items() if r["status"] == "pass"]
        lines += [f"## {part}: {len(passed)} of {len(rows)} pass", "",
                  "without token attention: {} of {} pass; with it (the transformer work's): {} of "
                  "{}".format(*count(False), *count(True)), "",
                  "| model | input | attention | stopped at | why |", "|---|---|---|---|---|"]
        for source, r in rows.items():
            if r["status"] != "pass":
                lines.append(f"| {source} | {r['size']} | {'yes' if r.get('attention') else ''} | "
                             f"{r['stage']} | {r['reason'].replace('|', '/')} |")
        lines += ["", f"Passing: {', '.join(passed) or 'none'}.", "",
                  "| largest builds (peak memory) | input | build s | whole check s | peak GB |",
                  "|---|---|---|---|---|"]
        for source, r in sorted(rows.items(), key=lambda kv: -kv[1]["peak_gb"])[:5]:
            build = f"{r['build_s']:.1f}" if "build_s" in r else ""
            lines.append(f"| {source} | {r['size']} | {build} | {r['wall_s']} | {r['peak_gb']} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="every model of a part (--part)")
    parser.add_argument("--part", choices=("torchvision", "timm"), default="torchvision")
    parser.add_argument("--only", help="with --all: recheck these models only (comma-separated "
                        "sources), keeping the other rows of the results file")
    parser.add_argument("--jobs", type=int, default=1, help="with --all: models checked at once "
                        "(each child uses one thread; more than the cores slows each past its limit)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child of --all: one model
    parser.add_argument("--size", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # every line of model code runs here, in the child: first the attention flag
        torch.set_num_threads(1)
        print(json.dumps({"attention": _attention_of(args.one, args.size)}), flush=True)
        print(json.dumps(check_one(args.one, args.size)), flush=True)
    elif args.all:
        if args.jobs < 1:
            raise SystemExit(f"--jobs {args.jobs}: allowed is 1 or more")
        run_all(args.part, args.only.split(",") if args.only else None, args.jobs)
    else:
        main()
