"""Side-by-side timing helpers shared by every benchmark script.

Each script runs on the backend chosen by `KERAS_BACKEND`, times its
candidates in one process (warm-up, then the median of `runs` timings) and
writes a markdown table to `bench/results/<name>_<backend>.md`, with ratios to
a baseline so runs on different days compare.
"""

import datetime
import os
import pathlib
import platform
import statistics
import time

import keras

RESULTS = pathlib.Path(__file__).parent / "results"
BACKEND = keras.backend.backend()
SMOKE = os.environ.get("KR_BENCH_SMOKE") == "1"


def sync(value):
    """Waits for asynchronous backends by pulling one element to the host."""
    leaves = keras.tree.flatten(value)
    for leaf in leaves[:1]:
        if hasattr(leaf, "shape"):
            keras.ops.convert_to_numpy(keras.ops.ravel(leaf)[:1])
    return value


def timeit(fn, warmup=3, runs=20):
    """Median wall time of `fn()` in seconds, after `warmup` calls."""
    if SMOKE:
        warmup, runs = 1, 2
    for _ in range(warmup):
        sync(fn())
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(fns, warmup=3, rounds=7, per_round=3):
    """Median seconds per call of each of `fns` (a dict), timed in turns.

    Every candidate is warmed up first; then each round times every
    candidate `per_round` times, in an order rotated from round to round,
    so slow phases of a shared machine hit all candidates alike.
    """
    if SMOKE:
        warmup, rounds, per_round = 1, 1, 1
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            sync(fns[name]())
    times = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            for _ in range(per_round):
                start = time.perf_counter()
                sync(fns[name]())
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def load_module_file(package, relative_path, name):
    """Loads one module file of an installed package without its `__init__`.

    For anchors whose package import fails here (timm imports torchvision,
    whose wheel does not match the CPU build of torch) while the module
    itself needs only torch: the same code is timed.
    """
    import importlib.util

    spec = importlib.util.find_spec(package)
    path = os.path.join(os.path.dirname(spec.origin), relative_path)
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def device_name():
    """The accelerator's name where the backend reports one, else the CPU."""
    try:
        devices = keras.distribution.list_devices()
    except Exception:  # noqa: BLE001 - a report header must never fail
        devices = []
    gpus = [d for d in devices if "gpu" in str(d).lower()]
    if gpus:
        return str(gpus[0])
    return (
        f"CPU ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores)"
    )


def write_table(name, title, header, rows, notes=()):
    """Writes one results table; returns its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}_{BACKEND}.md"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
    lines = [
        f"# {title} ({BACKEND})",
        "",
        f"keras {keras.__version__}, backend {BACKEND}, device "
        f"{device_name()}, {stamp}" + (" (smoke run)" if SMOKE else ""),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    lines += [""] + [f"- {n}" for n in notes]
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return path
