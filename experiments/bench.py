"""Throughput and memory of the frame-level models: ``python -m experiments.bench [--quick]``.

For each registered model: parameter count, training frames/s (one full train step of the
trainer: forward, backward, SGD-Nesterov update, on a device-resident batch) and inference
frames/s (eval-mode forward) at batch 4 x 696 frames, the paper's setting, on random
features (video 512, audio 128, text 768). The first call of each step (tracing and
compilation) is timed apart and left out of the throughput. Data loading is not included:
it is measured by the window pipeline, not here.

Peak memory is the peak resident set size (RSS) of this process while the model is built,
compiled and run, minus the RSS just before, sampled every 5 ms by a thread with psutil.
On CPU that includes XLA's buffers; on an accelerator it is host memory only, and the
device's own peak (``memory_stats()['peak_bytes_in_use']``) is reported when available.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Callable, Mapping

import jax
import numpy as np
import psutil
from flax import nnx

from ahjax.train import trainer as trainer_lib
from ahjax.train.trainer import TrainConfig
from baselines.tcn import ConcatTCN, TCNConfig

DIMS = {"video": 512, "audio": 128, "text": 768}
BATCH, FRAMES = 4, 696

# Model name -> builder(dims, rngs). Other families register here.
MODELS: dict[str, Callable[[Mapping[str, int], nnx.Rngs], nnx.Module]] = {
    "concat_tcn": lambda dims, rngs: ConcatTCN(dims, TCNConfig(), rngs=rngs),
}


class PeakRSS:
    """Context manager sampling this process's RSS; ``.delta`` = peak - start, in bytes."""

    def __init__(self, every: float = 0.005):
        self.every, self.proc = every, psutil.Process()

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.every)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.delta = self.peak - self.start


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {m: rng.normal(size=(BATCH, FRAMES, d)).astype(np.float32) for m, d in DIMS.items()}
    out["labels"] = rng.integers(0, 2, (BATCH, FRAMES)).astype(np.int32)
    out["mask"] = np.ones((BATCH, FRAMES), np.float32)
    return out


def _timed(fn: Callable[[], object], steps: int) -> tuple[float, float]:
    """(seconds of the first call, mean seconds of ``steps`` later calls), each synchronised."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return first, (time.perf_counter() - t0) / steps


def bench_model(name: str, steps: int) -> dict:
    """Measurements of one registered model (see the module docstring)."""
    cfg = TrainConfig()  # the paper's SGD recipe
    mesh = trainer_lib.make_mesh(0)
    with PeakRSS() as mem:
        model = MODELS[name](DIMS, nnx.Rngs(params=0, dropout=1))
        params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        opt = nnx.Optimizer(model, trainer_lib.make_optimizer(cfg, 1000), wrt=nnx.Param)
        graphdef, state = nnx.split((model, opt))
        train_step = trainer_lib.make_train_step(graphdef, tuple(DIMS), cfg, mesh)
        eval_step = trainer_lib.make_eval_step(graphdef, tuple(DIMS))
        batch = trainer_lib._put(_batch(), (*DIMS, "labels", "mask"), mesh)
        state = jax.device_put(state, trainer_lib.NamedSharding(mesh, trainer_lib.P()))
        key = jax.random.key(0)
        holder = {"state": state}

        def train_once():
            holder["state"], m = train_step(holder["state"], batch, key)
            return m["loss"]

        train_compile, train_s = _timed(train_once, steps)
        infer_compile, infer_s = _timed(lambda: eval_step(holder["state"], batch), steps)
    frames = BATCH * FRAMES
    out = {"params": params, "batch": [BATCH, FRAMES], "timed_steps": steps,
           "train_frames_per_s": frames / train_s, "infer_frames_per_s": frames / infer_s,
           "train_step_s": train_s, "infer_step_s": infer_s,
           "train_first_call_s": train_compile, "infer_first_call_s": infer_compile,
           "peak_rss_delta_mb": mem.delta / 2 ** 20}
    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    if stats and "peak_bytes_in_use" in stats:
        out["device_peak_mb"] = stats["peak_bytes_in_use"] / 2 ** 20
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse ``--quick``/``--models``/``--steps``, run the benchmark, print JSON."""
    parser = argparse.ArgumentParser(prog="python -m experiments.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 timed steps instead of 5")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names")
    args = parser.parse_args(argv)
    steps = args.steps or (2 if args.quick else 5)
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {sorted(MODELS)}")
    report = {"device": str(jax.devices()[0].device_kind), "n_devices": jax.device_count(),
              "cpu_threads": psutil.cpu_count(), "models": {}}
    for name in names:
        report["models"][name] = bench_model(name, steps)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
