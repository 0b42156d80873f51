"""Benchmark the runner against the plain reference loop, side by side in one invocation.

    python scripts/benchmark.py                      # everything, 3 repeats (~25 minutes on 2 cores)
    python scripts/benchmark.py --only steps memory  # some of it
    python scripts/benchmark.py --repeats 5 --out outputs/benchmark/today.json
    python scripts/benchmark.py --only steps --compare outputs/benchmark/last_month.json   # ratios to then

Every measurement runs in a fresh process (so peak RSS is its own), the reference and the runner
alternating, and the table shows medians and ratios (the targets beside them). The JSON records
the machine's fingerprint (CPU model and instruction sets, cores, torch, Python); `--compare OLD.json`
prints each figure's ratio to that earlier run, so a regression shows as a number:

- steps:   steps/s of the lecture recipe, batch 32, one thread: nplm/reference.py vs
           `python train.py experiment=lecture` (and that both reach the same loss).
- fast:    training time until val < 2.17 with `experiment=fast` (time-to-target).
- sweep:   wall time of a 16-run grid of lecture-size models (4 learning rates x 4 seeds): 16
           reference loops one after another vs one vectorised `train.py -m` sweep
           (+launcher=vectorized: the 16 runs as one stacked model, all cores), each lr x0.1
           half-way as in the lecture (--sweep-steps per run), and the 16 runs' mean val loss in both.
- startup: wall time of `python train.py train.steps=0` vs `python -c "import torch"`, with W&B
           disabled and with W&B offline (the default), alternating.
- load:    steps/s of the default run (`python train.py`, 2,000 steps) with train.threads=0 (the
           default) and train.threads=1, on an idle machine and beside a process busy on one core.
- memory:  peak RSS of the lecture run vs the reference loop.
- words:   words/s of word-level training (batch 128) and chunked evaluation: `data=shakespeare`
           (5,989 tokens) and a synthetic Zipf corpus with a 16,000-word vocabulary, where the
           output layer dominates, each with the full softmax and with an adaptive one
           (model.softmax_cutoffs), alternating, and their ratio; on the GPU too when there is one.
- repro:   what reproducible mode (the default, nplm/repro.py) costs: steps/s with reproducible=true,
           with reproducible=false and with the AVX2 code paths on one thread (the pins before
           2026-12-01, which repeat on one CPU but not from Intel to AMD), alternating, for the lecture
           on the plain path and on the compiled path (--repro-steps steps), and whether the losses
           differ; then true against false for every shipped recipe (--recipes) on the compiled path,
           one thread, --recipe-steps steps each.
- recipes: every shipped recipe (conf/experiment/ and the default), --recipe-steps steps on one
           thread: the compiled path in the default mode vs the plain path with reproducible=false
           and in the default mode, alternating, with each one's val loss and the package's build time.
- gpu:     where there is a CUDA GPU (else skipped, and said so): the steps and sweep figures
           with device=cuda: the reference loop on the GPU vs the runner's CUDA graph (and its plain
           path), and 16 reference loops vs one vectorised sweep whose stacked steps are a CUDA graph.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from nplm import repro  # noqa: E402  (torch-free)
PARTS = ("steps", "fast", "sweep", "startup", "load", "memory", "words", "repro", "recipes", "gpu")
# every shipped recipe, on data it runs on (words_large: every Shakespeare word kept, more than its cutoffs)
RECIPES = {"default": [], "fast": ["experiment=fast"], "lecture": ["experiment=lecture"], "best": ["experiment=best"],
           "mixture": ["experiment=mixture"], "words": ["experiment=words", "data=shakespeare"],
           "words_large": ["experiment=words_large", "data=shakespeare", "data.min_count=1"],
           "bengio2003": ["experiment=bengio2003", "data=shakespeare"]}
QUIET = {"WANDB_MODE": "disabled", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}

REFERENCE = """
import json, sys, time, torch
from nplm.reference import lecture_loop
torch.set_num_threads(1)
runs = json.loads(sys.argv[1])
t0 = time.perf_counter()
out = [lecture_loop(**kw) for kw in runs]
print(json.dumps({"wall_s": time.perf_counter() - t0, "train_time_s": sum(o["train_time_s"] for o in out),
                  "val_loss": out[-1]["val_loss"], "train_loss": out[-1]["train_loss"],
                  "val_losses": [o["val_loss"] for o in out]}))
"""


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """Run cmd; return (wall seconds, peak RSS in MB of that process, stdout). Exits on failure."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, env={**os.environ, **QUIET, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            sys.exit(f"error: {' '.join(map(str, cmd[:4]))} ... exited {proc.returncode}:\n{err.read()[-2000:]}")
        return wall, usage.ru_maxrss // 1024, out.read()


def reference(runs: list[dict]) -> tuple[dict, int]:
    """The lecture's plain loop, on the code paths the runner's reproducible mode pins (so they compare)."""
    wall, rss, out = timed([sys.executable, "-c", REFERENCE, json.dumps(runs)], env=repro.expected())
    return json.loads(out.strip().splitlines()[-1]) | {"process_wall_s": wall}, rss


def runner(*overrides: str, env: dict | None = None) -> tuple[dict, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        wall, rss, _ = timed([sys.executable, "train.py", *overrides, f"hydra.run.dir={tmp}/run",
                              f"hydra.sweep.dir={tmp}/sweep"], env)
        summary = Path(tmp, "run", "summary.json")
        jobs = [json.loads(p.read_text()) for p in Path(tmp, "sweep").glob("*/summary.json")]  # a multirun's
        return (json.loads(summary.read_text()) if summary.exists() else {"jobs": jobs}), wall, rss


def bench_steps(repeats: int, steps: int, device: str = "cpu") -> dict:
    ref, fast, plain, losses = [], [], [], {}
    run = ["experiment=lecture", f"train.steps={steps}", f"optim.decay_steps=[{steps // 2}]",
           f"train.eval_interval={steps}", "train.num_samples=0", f"device={device}"]
    warm, _, _ = runner(*run, "train.fast=on", "train.steps=100")  # builds the package if not cached
    for _ in range(repeats):
        r, _ = reference([{"steps": steps, "decay_step": steps // 2, "device": device}])
        ref.append(steps / r["train_time_s"])
        losses["reference"] = r["val_loss"]
        s, _, _ = runner(*run, "train.fast=on")  # the compiled path (as experiment=lecture takes it)
        fast.append(s["steps_per_s"])
        losses["compiled"] = s["val_loss"]
        s, _, _ = runner(*run, "train.fast=off")
        plain.append(s["steps_per_s"])
        losses["plain"] = s["val_loss"]
    med = statistics.median
    return {"reference_steps_per_s": med(ref), "runner_steps_per_s": med(fast), "plain_steps_per_s": med(plain),
            "ratio": med(fast) / med(ref), "plain_ratio": med(plain) / med(ref), "steps": steps, "device": device,
            "path": warm["path"],
            "build_s": warm.get("build_time_s"), "reference_val_loss": losses["reference"],
            "runner_val_loss": losses["compiled"], "plain_val_loss": losses["plain"], "target": ">= 5x"}


def bench_fast(repeats: int) -> dict:
    times, losses = [], []
    for _ in range(max(5, repeats)):
        s, _, _ = runner("experiment=fast", "train.num_samples=0")
        times.append(s["train_time_s"])
        losses.append(s["val_loss"])
    return {"train_time_s": statistics.median(times), "all_s": times, "val_loss": losses[-1],
            "reached": all(v < 2.17 for v in losses), "target": "<= 1 s"}


def bench_sweep(repeats: int, steps: int, device: str = "cpu") -> dict:
    lrs, seeds = (0.01, 0.03, 0.05, 0.1), (1, 2, 3, 4)  # up to the lecture's 0.1 (0.2 is unstable: chaotic)
    # the lecture's recipe at this length: each lr x0.1 from half-way
    runs = [{"steps": steps, "decay_step": steps // 2, "lr": lr, "seed": seed, "device": device}
            for lr in lrs for seed in seeds]
    sweep = ["-m", "+launcher=vectorized", "experiment=lecture", f"device={device}", f"train.steps={steps}",
             f"train.eval_interval={steps}",
             f"optim.decay_steps=[{steps // 2}]", "train.num_samples=0", f"optim.lr={','.join(map(str, lrs))}",
             f"seed={','.join(map(str, seeds))}"]
    runner(*sweep, "train.fast=on", "train.steps=20")  # builds the package for 16 stacked runs if not cached
    ref, run = [], []
    for _ in range(repeats):
        r, _ = reference(runs)
        ref.append(r["process_wall_s"])
        s, wall, _ = runner(*sweep)
        run.append(wall)
    # the same 16 runs (lr, seed) in both: their mean val loss (one run's final loss at a high
    # constant lr swings by a few hundredths with rounding; the mean shows whether they agree)
    val = {(j["config"]["optim"]["lr"], j["seed"]): j["val_loss"] for j in s["jobs"]}
    runner_val = [val[(kw["lr"], kw["seed"])] for kw in runs]
    return {"reference_wall_s": statistics.median(ref), "runner_wall_s": statistics.median(run),
            "ratio": statistics.median(ref) / statistics.median(run), "runs": 16, "steps_per_run": steps,
            "path": s["jobs"][0]["path_reason"], "train_s": s["jobs"][0].get("vector_train_time_s"),
            "reference_val_losses": r["val_losses"], "runner_val_losses": runner_val,
            "reference_val_loss": statistics.mean(r["val_losses"]), "runner_val_loss": statistics.mean(runner_val),
            "device": device, "target": ">= 8x"}


def bench_startup(repeats: int) -> dict:
    torch_only, runner_walls, wandb_walls = [], [], []
    for _ in range(max(5, repeats)):
        torch_only.append(timed([sys.executable, "-c", "import torch"])[0])
        runner_walls.append(runner("train.steps=0", "train.num_samples=0")[1])
        wandb_walls.append(runner("train.steps=0", "train.num_samples=0", "wandb.mode=offline")[1])
    return {"runner_wall_s": statistics.median(runner_walls), "import_torch_s": statistics.median(torch_only),
            "wandb_wall_s": statistics.median(wandb_walls),
            "wandb_extra_s": statistics.median(w - r for w, r in zip(wandb_walls, runner_walls)),
            "all_s": runner_walls, "all_import_torch_s": torch_only, "all_wandb_s": wandb_walls,
            "target": "<= 3 s", "wandb_target": "<= +0.5 s"}


def bench_load(repeats: int) -> dict:
    """The default run's steps/s, default threads vs one thread, idle and beside a busy core."""
    out = {}
    for load in ("idle", "busy"):
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None
        try:
            rates = {"auto": [], "one": []}
            for _ in range(repeats):
                for name, threads in (("auto", 0), ("one", 1)):
                    s = runner("train.steps=2000", "train.num_samples=0", f"train.threads={threads}",
                               "reproducible=false")[0]  # the thread choice by size (reproducible: one)
                    rates[name].append(s["steps_per_s"])
                    out.setdefault("threads", s["threads"])
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        out[load] = {name: statistics.median(r) for name, r in rates.items()} | {"all": rates}
        out[load]["ratio"] = out[load]["auto"] / out[load]["one"]
    out["target"] = ">= 0.5x of one thread beside a busy core"
    return out


def bench_repro(repeats: int, steps: int, recipe_steps: int, names: list[str]) -> dict:
    """steps/s with reproducible=true, reproducible=false, and the AVX2 code paths on one thread,
    alternating, and the val loss of each: the lecture on both paths; then each shipped recipe in
    `names` on the compiled path, on one thread, true against false only."""
    lecture = ["experiment=lecture", f"train.steps={steps}", f"optim.decay_steps=[{steps // 2}]",
               f"train.eval_interval={steps}", "train.num_samples=0"]
    short = [f"train.steps={recipe_steps}", f"train.eval_interval={recipe_steps}", "train.num_samples=0",
             "train.threads=1", "train.fast=on"]
    cases = {"lecture, plain path": [*lecture, "train.fast=off"], "lecture, compiled path": [*lecture, "train.fast=on"],
             **{f"{n}, compiled path": [*RECIPES[n], *short] for n in names if n != "lecture"}}
    modes = {"on": (["reproducible=true"], None), "off": (["reproducible=false"], None),
             "avx2": (["reproducible=false", "train.threads=1"], repro.AVX2_PATHS)}  # the old pins, by hand
    out = {}
    for name, run in cases.items():
        these = modes if name.startswith("lecture") else {m: modes[m] for m in ("on", "off")}
        for args, env in these.values():  # the compiled packages of each mode built (and cached) first
            runner(*run, "train.steps=20", "train.eval_interval=20", *args, env=env)
        rates, losses = {m: [] for m in these}, {}
        for _ in range(repeats):
            for mode, (args, env) in these.items():
                s = runner(*run, *args, env=env)[0]
                rates[mode].append(s["steps_per_s"])
                losses[mode] = s.get("nplm_val_loss", s["val_loss"])  # the network's, before any mixture
        med = {m: statistics.median(r) for m, r in rates.items()}
        out[name] = {"on": med["on"], "off": med["off"], "ratio": med["on"] / med["off"], "all": rates,
                     **{f"val_loss_{m}": v for m, v in losses.items()}}
        if "avx2" in med:
            out[name] |= {"avx2": med["avx2"], "avx2_ratio": med["on"] / med["avx2"]}
    out["target"] = ">= 0.9x (default, lecture): what the same numbers on any x86-64 CPU cost"
    return out


def bench_recipes(repeats: int, steps: int, names: list[str]) -> dict:
    """steps/s of every shipped recipe (`steps` steps, one thread), alternating: the default mode
    (reproducible, the compiled path: train.fast=on) against the plain path with reproducible=false
    (the fastest plain training there was) and in reproducible mode; their ratios, and each one's
    val loss. The packages are built (and cached) first; the build time is reported."""
    short = [f"train.steps={steps}", f"train.eval_interval={steps}", "train.num_samples=0", "train.threads=1"]
    modes = {"compiled": ["train.fast=on"], "plain_off": ["train.fast=off", "reproducible=false"],
             "plain_on": ["train.fast=off"]}
    out = {}
    for name, recipe in ((n, RECIPES[n]) for n in names):
        warm = runner(*recipe, *short, "train.fast=on", "train.steps=20", "train.eval_interval=20")[0]
        rates, losses = {m: [] for m in modes}, {}
        for _ in range(repeats):
            for mode, args in modes.items():
                s = runner(*recipe, *short, *args)[0]
                rates[mode].append(s["steps_per_s"])
                losses[mode] = s.get("nplm_val_loss", s["val_loss"])  # the network's, before any mixture
        med = {m: statistics.median(r) for m, r in rates.items()}
        out[name] = {**med, "ratio": med["compiled"] / med["plain_off"], "ratio_on": med["compiled"] / med["plain_on"],
                     "val_loss": losses, "path": warm["path"], "build_s": warm.get("build_time_s"), "all": rates}
    out["target"] = ">= 2.5x (default), >= 5x the reference loop (lecture: part steps), >= 1x (others)"
    return out


def bench_memory(repeats: int, steps: int) -> dict:
    ref, run = [], []
    for _ in range(repeats):
        ref.append(reference([{"steps": steps}])[1])
        run.append(runner("experiment=lecture", f"train.steps={steps}", "train.num_samples=0",
                          "train.fast=on")[2])  # the path the 200k-step lecture takes
    return {"reference_peak_rss_mb": statistics.median(ref), "runner_peak_rss_mb": statistics.median(run),
            "ratio": statistics.median(run) / statistics.median(ref), "steps": steps, "target": "<= 400 MB"}


def zipf_corpus(path: Path, vocab: int = 16_000, tokens: int = 200_000, seed: int = 0) -> Path:
    """A synthetic text of `tokens` words, 20 per line: every one of `vocab` words once (so the training
    split holds them all), then draws from a Zipf law over them."""
    import torch
    g = torch.Generator().manual_seed(seed)
    p = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)
    ids = torch.randperm(vocab, generator=g).tolist() + torch.multinomial(p, tokens - vocab, True, generator=g).tolist()
    path.write_text("\n".join(" ".join(f"w{i}" for i in ids[j:j + 20]) for j in range(0, tokens, 20)) + "\n")
    return path


def bench_words(repeats: int) -> dict:
    """Word-level words/s, each corpus with the full softmax and with an adaptive one (alternating)."""
    import torch
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        corpora = {"shakespeare": (["data=shakespeare"], "[1000,3000]"),
                   "zipf16k": (["data=shakespeare", f"data.path={zipf_corpus(Path(tmp) / 'zipf.txt')}",
                                "data.min_count=1", "data.max_vocab=16000", "data.lowercase=false",
                                "model.n_embd=60"], "[2000,6000]")}
        for name, (overrides, cutoffs) in corpora.items():
            for device in devices:
                figs, vocab = {"full": ([], []), "adaptive": ([], [])}, None
                for _ in range(repeats):
                    for variant, extra in (("full", []), ("adaptive", [f"model.softmax_cutoffs={cutoffs}"])):
                        s, _, _ = runner(*overrides, *extra, f"device={device}", "train.steps=300",
                                         "train.eval_interval=300", "train.num_samples=0")
                        figs[variant][0].append(s["train_tokens_per_s"])
                        figs[variant][1].append(s["eval_tokens_per_s"])
                        vocab = s["vocab_size"]
                full, adaptive = ({"train": statistics.median(t), "eval": statistics.median(e)}
                                  for t, e in figs.values())
                out[f"{name} {device}"] = {
                    "vocab_size": vocab, "batch_size": 128, "train_words_per_s": full["train"],
                    "eval_words_per_s": full["eval"], "softmax_cutoffs": cutoffs,
                    "adaptive_train_words_per_s": adaptive["train"], "adaptive_eval_words_per_s": adaptive["eval"],
                    "adaptive_train_ratio": adaptive["train"] / full["train"],
                    "adaptive_eval_ratio": adaptive["eval"] / full["eval"]}
    return out


def bench_gpu(repeats: int, steps: int, sweep_steps: int) -> dict:
    import torch
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA GPU here"}
    return {"device": torch.cuda.get_device_name(), "steps": bench_steps(repeats, steps, "cuda"),
            "sweep": bench_sweep(repeats, sweep_steps, "cuda")}


def table(results: dict) -> str:
    rows = []
    steps = [(results.get("steps"), "(1 thread), compiled path"),
             (results.get("gpu", {}).get("steps"), "on the GPU, CUDA graph")]
    for r, how in ((r, how) for r, how in steps if r):
        rows.append((f"lecture recipe steps/s {how}", f"{r['reference_steps_per_s']:,.0f}",
                     f"{r['runner_steps_per_s']:,.0f}", f"{r['ratio']:.2f}x", r["target"]))
        rows.append(("  val loss after those steps", f"{r['reference_val_loss']:.4f}", f"{r['runner_val_loss']:.4f}",
                     f"{r['runner_val_loss'] - r['reference_val_loss']:+.4f}", "within 0.01"))
        if r["device"] == "cpu":
            rows.append(("  building its compiled package, s (once per shape)", "",
                         f"{r['build_s']:.1f}" if r["build_s"] else "cached", "", ""))
        rows.append((f"lecture recipe steps/s {how.split(',')[0]}, plain path", f"{r['reference_steps_per_s']:,.0f}",
                     f"{r['plain_steps_per_s']:,.0f}", f"{r['plain_ratio']:.2f}x", ""))
        rows.append(("  val loss after those steps", f"{r['reference_val_loss']:.4f}", f"{r['plain_val_loss']:.4f}",
                     f"{r['plain_val_loss'] - r['reference_val_loss']:+.4f}",
                     "equal" if r["device"] == "cpu" else "within 0.01"))
    if "fast" in results:
        r = results["fast"]
        rows.append(("experiment=fast: training s to val < 2.17", "", f"{r['train_time_s']:.2f}",
                     "" if r["reached"] else "NOT REACHED", r["target"]))
    for r in filter(None, (results.get("sweep"), results.get("gpu", {}).get("sweep"))):
        on = " on the GPU" if r["device"] != "cpu" else ""
        rows.append((f"16-run grid{on}, {r['steps_per_run']:,} steps each: wall s", f"{r['reference_wall_s']:.1f}",
                     f"{r['runner_wall_s']:.1f}", f"{r['ratio']:.2f}x", r["target"]))
        rows.append(("  mean val loss of the 16 runs", f"{r['reference_val_loss']:.4f}",
                     f"{r['runner_val_loss']:.4f}", f"{r['runner_val_loss'] - r['reference_val_loss']:+.4f}",
                     "within 0.01"))
    if "startup" in results:
        r = results["startup"]
        rows.append(("start-up: train.py with 0 steps, wall s", f"{r['import_torch_s']:.2f} (import torch)",
                     f"{r['runner_wall_s']:.2f}", "", r["target"]))
        rows.append(("  the same with W&B offline (the default), wall s", f"{r['runner_wall_s']:.2f} (W&B disabled)",
                     f"{r['wandb_wall_s']:.2f}", f"{r['wandb_extra_s']:+.2f} s", r["wandb_target"]))
    if "load" in results:
        r = results["load"]
        for load in ("idle", "busy"):
            rows.append((f"default run steps/s, {load}{' (one core busy beside it)' if load == 'busy' else ''}: "
                         f"threads=1 vs default ({r['threads']})", f"{r[load]['one']:,.0f}", f"{r[load]['auto']:,.0f}",
                         f"{r[load]['ratio']:.2f}x", r["target"] if load == "busy" else ""))
    for name, r in ((k, v) for k, v in results.get("repro", {}).items() if isinstance(v, dict)):
        rows.append((f"reproducible mode, {name}: steps/s off vs on", f"{r['off']:,.0f}", f"{r['on']:,.0f}",
                     f"{r['ratio']:.2f}x", results["repro"]["target"]))
        rows.append(("  val loss off vs on", f"{r['val_loss_off']:.6f}", f"{r['val_loss_on']:.6f}",
                     "equal" if r["val_loss_off"] == r["val_loss_on"] else
                     f"{r['val_loss_on'] - r['val_loss_off']:+.2g}", ""))
        if "avx2" in r:  # JSON written before 2026-12-01 lacks it
            rows.append(("  AVX2 paths on one thread (the pins before 2026-12-01) vs on", f"{r['avx2']:,.0f}",
                         f"{r['on']:,.0f}", f"{r['avx2_ratio']:.2f}x", "same numbers on one CPU only"))
    for name, r in ((k, v) for k, v in results.get("recipes", {}).items() if isinstance(v, dict)):
        rows.append((f"{name}: steps/s, plain reproducible=false vs compiled (default mode)", f"{r['plain_off']:,.0f}",
                     f"{r['compiled']:,.0f}", f"{r['ratio']:.2f}x",
                     ">= 2.5x" if name == "default" else "" if name == "lecture" else ">= 1x"))
        rows.append(("  plain in the default mode vs compiled", f"{r['plain_on']:,.0f}", f"{r['compiled']:,.0f}",
                     f"{r['ratio_on']:.2f}x", ""))
        v = r["val_loss"]
        rows.append(("  val loss: plain reproducible=false / plain default / compiled", "",
                     f"{v['plain_off']:.4f} / {v['plain_on']:.4f} / {v['compiled']:.4f}",
                     f"build {r['build_s']:.0f} s" if r["build_s"] else "cached", r["path"]))
    if "memory" in results:
        r = results["memory"]
        rows.append((f"peak RSS MB, lecture recipe {r['steps']:,} steps", f"{r['reference_peak_rss_mb']:.0f}",
                     f"{r['runner_peak_rss_mb']:.0f}", f"{r['ratio']:.2f}x", r["target"]))
    if "skipped" in results.get("gpu", {}):
        rows.append(("GPU figures", "", f"skipped: {results['gpu']['skipped']}", "", ""))
    for name, r in results.get("words", {}).items():
        rows.append((f"word level, {name} ({r['vocab_size']:,} words): train / eval words/s", "",
                     f"{r['train_words_per_s']:,.0f} / {r['eval_words_per_s']:,.0f}", "", "practical"))
        if "adaptive_train_words_per_s" in r:
            rows.append((f"  adaptive softmax (model.softmax_cutoffs={r['softmax_cutoffs']}): train / eval words/s",
                         "", f"{r['adaptive_train_words_per_s']:,.0f} / {r['adaptive_eval_words_per_s']:,.0f}",
                         f"{r['adaptive_train_ratio']:.2f}x / {r['adaptive_eval_ratio']:.2f}x", "faster than full"))
    head = ("figure", "reference loop", "runner", "ratio", "target")
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(5)]
    fmt = lambda row: "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, rows)])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="which figures to measure")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per figure (fast, startup: at least 5)")
    parser.add_argument("--steps", type=int, default=20_000, help="steps of the lecture recipe for steps/memory")
    parser.add_argument("--sweep-steps", type=int, default=30_000, help="steps of each of the 16 sweep runs")
    parser.add_argument("--repro-steps", type=int, default=10_000, help="steps of the lecture runs of `repro`")
    parser.add_argument("--recipe-steps", type=int, default=300, help="steps of each recipe's runs of `recipes`")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES),
                        help="which recipes `recipes` measures (default: all)")
    parser.add_argument("--out", type=Path, help="JSON file (default outputs/benchmark/<date_time>.json)")
    parser.add_argument("--compare", type=Path, help="an earlier run's JSON: print each figure's ratio to it")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.steps < 2 or args.sweep_steps < 1 or args.repro_steps < 2:
        parser.error("--repeats and --sweep-steps must be at least 1, --steps and --repro-steps at least 2")
    old = load_earlier(args.compare, parser) if args.compare else None
    out = args.out or ROOT / "outputs" / "benchmark" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}.json"
    results = {}
    for part in PARTS:
        if part not in args.only:
            continue
        print(f"measuring {part} ...", file=sys.stderr, flush=True)
        if part == "steps":
            results[part] = bench_steps(args.repeats, args.steps)
        elif part == "fast":
            results[part] = bench_fast(args.repeats)
        elif part == "sweep":
            results[part] = bench_sweep(args.repeats, args.sweep_steps)
        elif part == "startup":
            results[part] = bench_startup(args.repeats)
        elif part == "load":
            results[part] = bench_load(args.repeats)
        elif part == "words":
            results[part] = bench_words(args.repeats)
        elif part == "repro":
            results[part] = bench_repro(args.repeats, args.repro_steps, args.recipe_steps, args.recipes)
        elif part == "recipes":
            results[part] = bench_recipes(args.repeats, args.recipe_steps, args.recipes)
        elif part == "gpu":
            results[part] = bench_gpu(args.repeats, args.steps, args.sweep_steps)
        else:
            results[part] = bench_memory(args.repeats, args.steps)
    machine = fingerprint() | {"date": time.strftime("%Y-%m-%d"), "repeats": args.repeats}
    cpu = f"{machine['cpu']['model']} ({', '.join(machine['cpu']['isa'])})"
    print(f"{machine['date']}, {cpu}, {machine['cores']} cores, torch {machine['torch']}, "
          f"medians of {args.repeats}+ runs")
    print(table(results))
    if old is not None:
        print(compare(old, {"machine": machine, "results": results}))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    print(f"written: {out}")


def fingerprint() -> dict:
    """What a figure depends on besides the code: the CPU and its instruction sets, the cores, the
    versions, the code paths reproducible mode pins here; and a short id of all that."""
    import hashlib

    import torch
    machine = {"cpu": repro.cpu(), "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
               "python": platform.python_version(), "platform": platform.platform(), "pins": repro.expected()}
    machine["fingerprint"] = hashlib.sha256(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:12]
    return machine


def load_earlier(path: Path, parser: argparse.ArgumentParser) -> dict:
    try:
        earlier = json.loads(path.read_text())
        assert isinstance(earlier.get("results"), dict)
    except (OSError, ValueError, AssertionError):
        parser.error(f"--compare {path}: not a JSON file this script wrote")
    return earlier


def figures(results: dict, prefix: str = "") -> dict[str, float]:
    """The numeric figures of a results dict, by dotted path (lists of single runs left out)."""
    out = {}
    for key, value in results.items():
        if isinstance(value, dict):
            out |= figures(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def compare(old: dict, new: dict) -> str:
    """Each figure measured in both runs, then and now, and now / then."""
    then, now = figures(old["results"]), figures(new["results"])
    both = [k for k in now if k in then]
    om, nm = old.get("machine", {}), new["machine"]
    lines = [f"compared with {om.get('date', '?')} ({om.get('fingerprint', 'no fingerprint')}): "
             + ("the same machine" if om.get("fingerprint") == nm["fingerprint"] else
                "ANOTHER machine or versions: " + "; ".join(f"{k} {om.get(k)} -> {nm.get(k)}" for k in
                                                            ("cpu", "cores", "torch", "python", "pins")
                                                            if om.get(k) != nm.get(k)))]
    if not both:
        return lines[0] + "\n(no figure in common)"
    width = max(map(len, both))
    for k in both:
        ratio = now[k] / then[k] if then[k] else float("nan")
        lines.append(f"  {k:<{width}}  {then[k]:>12.6g} -> {now[k]:<12.6g} {ratio:6.3f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
