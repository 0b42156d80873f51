"""Reproducible mode: the same config gives the same numbers on any x86-64 CPU, Intel or AMD.

Which kernels torch, MKL and oneDNN run is decided at run time from the CPU: AVX-512 on one
machine, AVX2 on another, each summing in its own order, so the same run ends a little apart (the
lecture's recipe: val 2.1643 on an AMD EPYC, 2.1702 on an Intel Xeon). `reproducible=true` (the
default) pins those choices, before torch is imported (they are read once, when the libraries
load), to the plain code paths that every x86-64 CPU runs alike:

    ATEN_CPU_CAPABILITY=default     torch's own kernels, without AVX2 or AVX-512
    MKL_CBWR=COMPATIBLE             MKL's matrix products: the one branch MKL runs alike on Intel and AMD
    ONEDNN_MAX_CPU_ISA=SSE41        oneDNN's kernels
    TORCHINDUCTOR_CPP_MARCH=x86-64-v3  the compiled fast path's C++: AVX2 and FMA (not -march=native)

and, once torch is loaded, one thread (a sum split among threads depends on their number) and
torch's deterministic algorithms (Inductor's too, for the compiled path's build). The pins and the
CPU are recorded in each run's summary and said in its log. Scripts that use a saved run (sample,
evaluate, reproduce) set the pins of its mode the same way.

Why not the faster AVX2 paths (the pins until 2026-12-01): MKL honours MKL_CBWR=AVX2 on Intel CPUs
only; on an AMD CPU it falls back to its automatic choice, so an Intel Xeon and an AMD EPYC ended the
lecture at val 2.1751 and 2.1643 with the same pins. With these pins both end at 2.1687
(docs/reproducibility.md); they cost up to about 3x in speed (scripts/benchmark.py --only repro).

`reproducible=false` must be given on the command line: it decides how torch is loaded, before
the config is composed. This module imports neither torch nor the config.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

PINS = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41",
        "TORCHINDUCTOR_CPP_MARCH": "x86-64-v3"}
# The pins until 2026-12-01: the same numbers on every run on one CPU, not from Intel to AMD. Kept to be
# forced from outside, as another CPU would pick them (scripts/benchmark.py's cost, tests/test_repro.py).
AVX2_PATHS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
              "TORCHINDUCTOR_CPP_MARCH": "x86-64-v3"}


def cpu() -> dict:
    """The CPU this process runs on: its model name and the instruction sets that decide the kernels."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "machine": platform.machine(),
            "isa": [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "amx_tile") if f in flags]}


def wanted(argv: list[str]) -> bool:
    """Whether the command runs in reproducible mode: unless `reproducible=false` is on its command
    line, or it resumes (resume=<folder>) a run that was not reproducible."""
    values = [a.split("=", 1)[1].lower() for a in argv if a.lstrip("+~").startswith("reproducible=")]
    if values:
        return values[-1] not in ("false", "0", "no", "off")
    folders = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    if folders and folders[-1] not in ("", "null"):
        return saved_mode(folders[-1])
    return True


def saved_mode(run_dir: str | Path) -> bool:
    """Whether the run recorded in run_dir was reproducible (its config.yaml; an unreadable one: the
    default), for a command that goes on with it or uses it (resume=, scripts/sample.py, evaluate.py)."""
    try:
        return "reproducible: false" not in (Path(run_dir).expanduser() / "config.yaml").read_text()
    except OSError:
        return True  # no such folder: the command refuses it with its own message


def pin(on: bool) -> None:
    """Before torch is imported: set the pins (on), or leave the environment as the user set it."""
    if on:
        os.environ.update(expected())
        os.environ["NPLM_PINNED"] = "1"  # this process set them (a config saying reproducible=false is refused)
        os.environ["TORCHINDUCTOR_DETERMINISTIC"] = "1"  # the compiled fast path's build
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, if a GPU trains


def expected() -> dict[str, str]:
    """The pins for this CPU: the plain code paths on any x86-64 CPU; none elsewhere."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    if not {"avx2", "fma"} <= set(cpu()["isa"]):  # AVX2 code would not run here: the compiled path is built
        return {**PINS, "TORCHINDUCTOR_CPP_MARCH": "x86-64"}  # without it (or fails, and the plain path trains)
    return dict(PINS)


def in_effect() -> dict[str, str | None]:
    """The environment's value of each pinned setting (None: unset, the library chooses)."""
    return {k: os.environ.get(k) for k in PINS}


def check(reproducible: bool) -> str:
    """That the config's mode is the process's (raise ConfigError if not); returns what the log says."""
    from nplm.config import ConfigError
    pinned = all(os.environ.get(k) == v for k, v in expected().items())
    where = cpu()
    on = f"{where['model']} ({', '.join(where['isa']) or 'no vector extensions'})"
    if reproducible and not pinned:
        raise ConfigError("reproducible=true, but this process loaded torch without the pins (ATEN_CPU_CAPABILITY, "
                          "MKL_CBWR, ...): start it with python train.py, which sets them first, or give "
                          "reproducible=false")
    if not reproducible and pinned and os.environ.get("NPLM_PINNED") == "1":
        raise ConfigError("reproducible=false must be given on the command line (python train.py reproducible=false "
                          "...): it decides how torch is loaded, before the config is composed")
    if reproducible and not expected():
        return (f"reproducible: one thread, deterministic algorithms; on {where['machine']} the kernels are not "
                f"pinned (only x86-64's are): the same numbers as other {where['machine']} machines where their "
                f"libraries agree; here {on}")
    if reproducible:
        return (f"reproducible: numeric code paths pinned ({', '.join(f'{k}={v}' for k, v in expected().items())}), "
                f"one thread, deterministic algorithms: the same numbers on any x86-64 CPU with this torch "
                f"(docs/reproducibility.md); here {on}")
    return f"reproducible=false: kernels and threads as this CPU picks them ({on}); another CPU may differ a little"


def settle() -> None:
    """Once torch is loaded, in reproducible mode: deterministic algorithms (the thread count is
    nplm/threads.py's: one). torch.use_deterministic_algorithms would also import the compiler
    (torch._dynamo, ~800 modules, a second of start-up) to set Inductor's flag; the compiled fast path
    is built in a child process, which reads that flag from TORCHINDUCTOR_DETERMINISTIC (pin)."""
    import torch
    torch._C._set_deterministic_algorithms(True, warn_only=True)
