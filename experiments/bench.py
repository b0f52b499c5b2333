"""Throughput and memory of the frame-level models, and the speed of level-1 extraction.

``python -m experiments.bench [--quick] [--models can,jmt] [--extract] [--reference DIR]``
prints one JSON object: for each registered model (:data:`MODELS`) its parameter count,
training and inference frames/s at batch 4 x 696 frames on random inputs (compilation
timed apart) and peak memory. Options add side-by-side runs of the paper's PyTorch models
(``--reference DIR``), a profile of the training step (``--profile``), level-1 extraction
speed (``--extract``, ``--extract-workers N``, ``--extract-baseline REV``) and the live
stream (``--stream RUN``, ``--stream-minutes M``). docs/performance.md ("The bench
command") says what each measures; figures are compared only within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import psutil
from flax import nnx

from ahjax import session_bench as long_stream
from ahjax import streaming as live
from ahjax.core.assets import enable_compilation_cache
from ahjax.core.data import demo
from ahjax.core.data.bah import load_bah
from ahjax.core.train import engine
from ahjax.core.train import trainer as trainer_lib
from ahjax.core.train.trainer import TrainConfig
from baselines import fusion
from baselines.tcn import ConcatTCN, TCNConfig
from level1_affect.dataset import QUICK_DATA, QUICK_EXTRACT, demo_root, extract_dataset
from level1_affect.extract import ExtractConfig, Extractor
from level1_affect.face import FaceEncoder
from level1_affect.media import load_audio
from level1_affect.whisper.transcribe import WhisperJax, transcribe_speech, wer
from level2_conflict.model import TwoLevelConfig, TwoLevelModel

DIMS = {"video": 512, "audio": 128, "text": 768}
# The level-1 tracks the two-level model reads, with their widths (level1_affect.schema).
TRACK_DIMS = {"face_present": 1, "face_desc": 9, "face_expr": 7, "voice_prosody": 6,
              "text_affect": 18}
BATCH, FRAMES = 4, 696

TARGET_SPEEDUP = 2.0   # the target for training frames/s against the reference
REFERENCE_MODELS = ("lfan", "can", "mt", "jmt")
NOTES = [
    "side_by_side (with --reference): train_peak_rss_ratio compares the two processes' peak "
    "RSS during the timed training steps (framework runtime included on both sides; our "
    "compilation happens before and is reported apart as peak_rss_mb).",
    "MT/JMT are not the reference's computation: ours use the text modality too (the "
    "reference drops it; hence more parameters) and attend over the modality tokens of "
    "each frame, where the reference's final attention runs across all frames x batch.",
    "Throughput excludes the first call of each step (compilation), reported as *_first_call_s.",
]


def _normal_inputs(rng: np.random.Generator, dims: Mapping[str, int], b: int, w: int) -> dict:
    return {m: rng.normal(size=(b, w, d)).astype(np.float32) for m, d in dims.items()}


def _track_inputs(rng: np.random.Generator, dims: Mapping[str, int], b: int, w: int) -> dict:
    """Level-1-like tracks: the two-level model reads signs, [0, 1] confidences and
    probabilities, so plain normal noise would not exercise it as real data does."""
    out = {m: rng.uniform(0.0, 1.0, (b, w, d)).astype(np.float32) for m, d in dims.items()}
    expr = np.exp(rng.normal(size=(b, w, dims["face_expr"])))
    out["face_expr"] = (expr / expr.sum(-1, keepdims=True)).astype(np.float32)
    out["face_desc"][..., 0] = rng.uniform(-1, 1, (b, w))          # valence
    out["text_affect"][..., 0] = rng.uniform(-1, 1, (b, w))        # VADER compound
    out["voice_prosody"][..., 0] = rng.uniform(80, 250, (b, w))    # pitch in Hz
    out["face_present"][:] = 1.0
    out["valid"] = np.ones((b, w), np.float32)
    return out


@dataclasses.dataclass(frozen=True)
class BenchModel:
    """A registered model: builder ``(dims, rngs) -> module``, its input widths, how to draw
    a batch of inputs ``(rng, dims, B, W) -> dict`` and, for the paper's baselines, the
    reference implementation's figures."""
    build: Callable[[Mapping[str, int], nnx.Rngs], nnx.Module]
    dims: Mapping[str, int]
    sample: Callable[[np.random.Generator, Mapping[str, int], int, int], dict] = _normal_inputs
    reference: bool = False      # one of the reference PyTorch models (--reference)


def _fusion_entry(name: str) -> BenchModel:
    return BenchModel(lambda dims, rngs: fusion.FUSION_MODELS[name](dict(dims), fusion.FusionConfig(), rngs),
                      DIMS, reference=name in REFERENCE_MODELS)


def _two_level(dims, rngs):
    return TwoLevelModel(TwoLevelConfig(fps=24.0), rngs=rngs)


# Model name -> how to build and feed it. Other families register here.
MODELS: dict[str, BenchModel] = {
    "concat_tcn": BenchModel(lambda dims, rngs: ConcatTCN(dims, TCNConfig(), rngs=rngs), DIMS),
    **{name: _fusion_entry(name) for name in ("can", "lfan", "mt", "jmt")},
    "two_level": BenchModel(_two_level, TRACK_DIMS, sample=_track_inputs),
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


def _timed(fn: Callable[[], object], steps: int) -> tuple[float, float, int]:
    """(seconds of the first call, mean seconds of ``steps`` later calls, peak RSS in bytes
    during those later calls), each synchronised."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    engine.release_freed_memory()   # as the training loop does after its first step
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        for _ in range(steps):
            out = fn()
        jax.block_until_ready(out)
        seconds = (time.perf_counter() - t0) / steps
    return first, seconds, mem.peak


def compare(ours: Mapping[str, float], reference: Mapping[str, float]) -> dict:
    """Ratios of one side-by-side run, each ours / reference (> 1: faster, or more memory),
    and whether the target is met."""
    out = {"train_speed_ratio": ours["train_frames_per_s"] / reference["train_frames_per_s"],
           "train_peak_rss_ratio": ours["train_peak_rss_mb"] / reference["train_peak_rss_mb"],
           "params_ratio": ours["params"] / reference["params"]}
    if "infer_frames_per_s" in reference:
        out["infer_speed_ratio"] = ours["infer_frames_per_s"] / reference["infer_frames_per_s"]
    return _with_target(out)


def _with_target(ratios: dict) -> dict:
    """``ratios`` with the issue's target and whether its speed and memory ratios meet it."""
    return {**ratios,
            "target": f">= {TARGET_SPEEDUP}x train frames/s and train peak RSS <= reference",
            "target_met": bool(ratios["train_speed_ratio"] >= TARGET_SPEEDUP
                               and ratios["train_peak_rss_ratio"] <= 1.0)}


def run_reference(folder: str | Path, name: str, steps: int, batch: int, frames: int,
                  threads: int) -> dict:
    """The reference model ``name`` timed by ``folder/bench_ref.py`` in a child process."""
    folder = Path(folder).resolve()
    script = folder / "bench_ref.py"
    if not script.is_file():
        raise FileNotFoundError(f"{folder}: no bench_ref.py (the reference benchmark script)")
    cmd = [sys.executable, str(script), "--model", name, "--steps", str(steps),
           "--infer_steps", str(steps), "--threads", str(threads), "--batch", str(batch),
           "--window", str(frames), "--infer_batch", str(batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(folder))
    if proc.returncode != 0:
        raise RuntimeError(f"{script} --model {name} failed: {proc.stderr.strip()[-800:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{script} --model {name} printed no JSON line")
    return json.loads(lines[-1])


def run_ours(name: str, steps: int, batch: int, frames: int, threads: int,
             xla_flags: str = "") -> dict:
    """Our model ``name`` measured by this module in a child process limited to ``threads``
    threads, as the reference is (XLA's CPU thread pools follow the process's CPU set),
    with ``xla_flags`` added to ``XLA_FLAGS``."""
    cmd = [sys.executable, "-m", "experiments.bench", "--models", name, "--steps", str(steps),
           "--batch", str(batch), "--frames", str(frames)]
    env = dict(os.environ)
    if xla_flags:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
    if hasattr(os, "sched_getaffinity") and threads < len(os.sched_getaffinity(0)):
        cpus = sorted(os.sched_getaffinity(0))[:threads]
        cmd = ["taskset", "-c", ",".join(map(str, cpus))] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          cwd=str(Path(__file__).resolve().parents[1]))
    if proc.returncode != 0:
        raise RuntimeError(f"our benchmark of {name} failed: {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout)["models"][name]


def parse_variants(text: str) -> dict[str, str]:
    """``"default;xnn=--xla_cpu_experimental_xnn_fusion_type=dot"`` -> {name: XLA flags}:
    the XLA settings our side is measured under (``default``: none)."""
    out = {}
    for item in (t.strip() for t in text.split(";")):
        if not item:
            continue
        name, _, flags = item.partition("=")
        if not name.strip() or name.strip() in out:
            raise ValueError(f"--variants: {item!r}: each needs a new name (name=FLAGS)")
        out[name.strip()] = flags.strip()
    if not out:
        raise ValueError("--variants: no variant given")
    return out


def _spread(values: list[float]) -> dict:
    v = np.asarray(values, np.float64)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()),
            "values": [float(x) for x in v]}


def side_by_side(folder: str | Path, names, steps: int, batch: int, frames: int,
                 threads: int, rounds: int = 1, variants: Mapping[str, str] | None = None,
                 log: Callable[[str], None] | None = None) -> dict:
    """For each reference model in ``names``, ``rounds`` times: the reference, then ours
    under each XLA variant, back to back (so each ratio is taken against the reference
    run just before it). Per model and variant: every round's ratios and their median,
    min and max; at the top level the first variant's medians (one round: its ratios) and
    the last round's figures."""
    variants = dict(variants or {"default": ""})
    out: dict = {}
    for r in range(rounds):
        for name in names:
            if not MODELS[name].reference:
                continue
            ref = run_reference(folder, name, steps, batch, frames, threads)
            entry = out.setdefault(name, {"rounds": []})
            got = {"reference": ref}
            for variant, flags in variants.items():
                ours = run_ours(name, steps, batch, frames, threads, flags)
                got[variant] = {"ours": ours, **compare(ours, ref)}
                if log:
                    log(f"round {r + 1}/{rounds} {name} {variant}: train "
                        f"{got[variant]['train_speed_ratio']:.2f}x")
            entry["rounds"].append(got)
    for name, entry in out.items():
        entry["variants"] = {}
        for variant in variants:
            per = [rd[variant] for rd in entry["rounds"]]
            entry["variants"][variant] = {
                "xla_flags": variants[variant],
                **{key: _spread([p[key] for p in per]) for key in
                   ("train_speed_ratio", "infer_speed_ratio", "train_peak_rss_ratio")}}
        first = next(iter(variants))
        last = entry["rounds"][-1]
        medians = {key: spread["median"] for key, spread in entry["variants"][first].items()
                   if key != "xla_flags"}
        entry.update(reference=last["reference"], ours=last[first]["ours"],
                     **_with_target({**medians, "params_ratio": last[first]["params_ratio"]}))
    return out


def _batch(entry: BenchModel, batch: int, frames: int) -> dict:
    """One random batch of ``entry``'s inputs with labels and a full mask."""
    data = entry.sample(np.random.default_rng(0), entry.dims, batch, frames)
    data["labels"] = np.random.default_rng(1).integers(0, 2, (batch, frames)).astype(np.int32)
    data["mask"] = np.ones((batch, frames), np.float32)
    # Every frame real, as in a full window; models that read ``valid`` (MT/JMT mask padded
    # keys with it, the two-level model pools with it) get it through their extra_inputs.
    data.setdefault("valid", np.ones((batch, frames), np.float32))
    return data


def bench_model(name: str, steps: int, batch: int = BATCH, frames: int = FRAMES) -> dict:
    """Measurements of one registered model (see the module docstring)."""
    entry = MODELS[name]
    cfg = TrainConfig()  # the paper's SGD recipe
    mesh = trainer_lib.make_mesh(0)
    data = _batch(entry, batch, frames)
    with PeakRSS() as mem:
        model = entry.build(dict(entry.dims), nnx.Rngs(params=0, dropout=1))
        params = fusion.param_count(model)
        keys = trainer_lib.input_keys(model, tuple(entry.dims))
        opt = nnx.Optimizer(model, trainer_lib.make_optimizer(cfg, 1000), wrt=nnx.Param)
        graphdef, state = nnx.split((model, opt))
        train_step = trainer_lib.make_train_step(graphdef, keys, cfg, mesh)
        eval_step = trainer_lib.make_eval_step(graphdef, keys)
        on_device = trainer_lib._put(data, (*keys, "labels", "mask"), mesh)
        state = jax.device_put(state, trainer_lib.NamedSharding(mesh, trainer_lib.P()))
        key = jax.random.key(0)
        holder = {"state": state}

        def train_once():
            holder["state"], m = train_step(holder["state"], on_device, key)
            return m["loss"]

        train_compile, train_s, train_peak = _timed(train_once, steps)
        infer_compile, infer_s, _ = _timed(lambda: eval_step(holder["state"], on_device), steps)
    n = batch * frames
    out = {"params": params, "inputs": dict(entry.dims), "batch": [batch, frames],
           "timed_steps": steps, "train_frames_per_s": n / train_s,
           "infer_frames_per_s": n / infer_s, "train_step_s": train_s, "infer_step_s": infer_s,
           "train_first_call_s": train_compile, "infer_first_call_s": infer_compile,
           "peak_rss_delta_mb": mem.delta / 2 ** 20, "peak_rss_mb": mem.peak / 2 ** 20,
           "train_peak_rss_mb": train_peak / 2 ** 20}
    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    if stats and "peak_bytes_in_use" in stats:
        out["device_peak_mb"] = stats["peak_bytes_in_use"] / 2 ** 20
    return out


def _cost(compiled) -> dict:
    """XLA's own estimate of a compiled computation: flops and bytes accessed."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {"gflop": float(cost.get("flops", 0.0)) / 1e9,
            "gbytes": float(cost.get("bytes accessed", 0.0)) / 1e9}


def _op_counts(hlo_text: str) -> dict:
    """How many of the optimised HLO's instructions are convolutions, dots, fusions, ..."""
    counts: dict = {}
    for op in re.findall(r"= [^ ]+ ([a-z-]+)\(", hlo_text):
        counts[op] = counts.get(op, 0) + 1
    keep = ("convolution", "dot", "fusion", "custom-call", "transpose", "copy", "reduce",
            "reduce-window", "while", "sort", "scatter", "gather")
    return {k: counts[k] for k in keep if k in counts}


def profile_model(name: str, steps: int, batch: int = BATCH, frames: int = FRAMES) -> dict:
    """Where one training step of ``name`` spends its time: the forward pass, the backward
    pass (gradient minus forward), the optimiser update and what is left (step minus the
    three: state handling, metrics, host-device traffic), each timed as its own jitted
    program on the same batch; with XLA's flop and byte estimates, the achieved GFLOP/s and
    the op mix of the optimised HLO of the full step."""
    entry = MODELS[name]
    cfg = TrainConfig()
    mesh = trainer_lib.make_mesh(0)
    data = _batch(entry, batch, frames)
    model = entry.build(dict(entry.dims), nnx.Rngs(params=0, dropout=1))
    keys = trainer_lib.input_keys(model, tuple(entry.dims))
    opt = nnx.Optimizer(model, trainer_lib.make_optimizer(cfg, 1000), wrt=nnx.Param)
    graphdef, state = nnx.split((model, opt))
    on_device = trainer_lib._put(data, (*keys, "labels", "mask"), mesh)

    def loss(model, batch):   # the train step's loss (aux loss weight 1, the default)
        logits, aux = model({k: batch[k] for k in keys}, train=True)
        ce, _ = trainer_lib.masked_cross_entropy(logits, batch["labels"], batch["mask"])
        return ce + jnp.asarray(aux.get("aux_loss", 0.0), jnp.float32)

    def loss_of(state, batch):
        return loss(nnx.merge(graphdef, state)[0], batch)

    def grads_of(state, batch):
        return nnx.grad(loss)(nnx.merge(graphdef, state)[0], batch)

    def update(state, grads):
        model, opt = nnx.merge(graphdef, state)
        opt.update(model, grads)
        return nnx.state((model, opt))

    forward, backward = jax.jit(loss_of), jax.jit(grads_of)
    upd = jax.jit(update)
    step = trainer_lib.make_train_step(graphdef, keys, cfg, mesh)
    grads = backward(state, on_device)
    key = jax.random.key(0)
    holder = {"state": jax.device_put(state, trainer_lib.NamedSharding(mesh, trainer_lib.P()))}

    def full():
        holder["state"], m = step(holder["state"], on_device, key)
        return m["loss"]

    times = {"forward": _timed(lambda: forward(state, on_device), steps)[1],
             "forward_and_backward": _timed(lambda: backward(state, on_device), steps)[1],
             "optimizer_update": _timed(lambda: upd(state, grads), steps)[1]}
    times["train_step"] = _timed(full, steps)[1]
    times["backward"] = max(0.0, times["forward_and_backward"] - times["forward"])
    times["rest_of_step"] = max(0.0, times["train_step"] - times["forward_and_backward"]
                                - times["optimizer_update"])
    cost_f = _cost(forward.lower(state, on_device).compile())
    cost_b = _cost(backward.lower(state, on_device).compile())
    compiled = step.lower(holder["state"], on_device, key).compile()
    share = {k: times[k] / times["train_step"] for k in
             ("forward", "backward", "optimizer_update", "rest_of_step")}
    return {"batch": [batch, frames], "timed_steps": steps, "seconds": times,
            "share_of_step": share,
            "forward_gflop": cost_f["gflop"], "forward_and_backward_gflop": cost_b["gflop"],
            "forward_gflop_per_s": cost_f["gflop"] / times["forward"],
            "forward_and_backward_gflop_per_s": cost_b["gflop"] / times["forward_and_backward"],
            "forward_and_backward_gbytes": cost_b["gbytes"],
            "train_step_memory_mb": _memory(compiled),
            "train_step_hlo_ops": _op_counts(compiled.as_text())}


def matmul_peak(size: int = 2048, steps: int = 5) -> dict:
    """GFLOP/s of one jitted ``size`` x ``size`` matmul on this machine: float32, and
    bfloat16 operands with float32 accumulation. The ceiling a compute-bound step's
    achieved GFLOP/s is to be read against."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(size, size)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(size, size)), jnp.float32)
    f32 = jax.jit(lambda x, y: x @ y)
    bf16 = jax.jit(lambda x, y: jnp.matmul(x.astype(jnp.bfloat16), y.astype(jnp.bfloat16),
                                           preferred_element_type=jnp.float32))
    flop = 2 * size ** 3
    out = {"size": size}
    for name, fn in (("float32", f32), ("bfloat16_operands_float32_accumulation", bf16)):
        _, seconds, _ = _timed(lambda: fn(a, b), steps)
        out[f"{name}_gflop_per_s"] = flop / seconds / 1e9
    return out


def _memory(compiled) -> dict:
    """XLA's buffer plan of a compiled step, in MB: its arguments (state and batch), its
    temporary buffers (activations kept for the backward pass included) and its outputs."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    return {name: getattr(m, f"{name}_size_in_bytes") / 2 ** 20
            for name in ("argument", "temp", "output", "alias")}


def demo_video(folder: str | Path, seconds: float = 60.0, seed: int = 0) -> Path:
    """One demo video of exactly ``seconds`` (1 participant, 1 question) made in ``folder``."""
    root = demo.make_demo(Path(folder) / "demo", seed=seed, participants=1, questions=(4,),
                          min_duration=seconds, max_duration=seconds)
    videos = sorted((root / "Videos").rglob("*.mp4"))
    if len(videos) != 1:
        raise RuntimeError(f"{root}: expected one demo video, found {len(videos)}")
    return videos[0]


def bench_extract(seconds: float = 60.0, repeats: int = 2, detect_every: int = 1) -> dict:
    """Level-1 extraction of one ``seconds``-long demo video with ASR: per-encoder seconds of
    each of ``repeats`` calls (the first loads and compiles the encoders) and the warm
    real-time factor (the median of the calls after the first).
    ``detect_every`` > 1 runs the face landmarker on every k-th frame only."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = demo_video(tmp, seconds)
        made = time.perf_counter() - t0
        extractor = Extractor(ExtractConfig(asr="always", detect_every=detect_every))
        calls = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            arrays, info = extractor.video(path)
            total = time.perf_counter() - t0
            per = {k: float(v) for k, v in info["seconds"].items()}
            # Audio decoding and bookkeeping fall between the encoders' own timers.
            per["other"] = max(0.0, total - sum(per.values()))
            calls.append({"seconds": per, "total_s": total, "n_frames": info["n_frames"],
                          "words": len(info["words"])})
        deviation = None
        if detect_every > 1:   # what skipping landmarker frames changes, against every frame
            full, _ = Extractor(ExtractConfig(asr="always", detect_every=1)).video(path)
            diffs = {name: np.abs(arrays[name] - full[name])
                     for name in ("face_present", "face_expr", "face_desc", "face_blend")}
            deviation = {name: {"mean_abs": float(d.mean()), "p99_abs": float(np.percentile(d, 99)),
                                "max_abs": float(d.max())} for name, d in diffs.items()}
            deviation["expression_argmax_agreement"] = float(
                (arrays["face_expr"].argmax(1) == full["face_expr"].argmax(1)).mean())
    video_s = calls[-1]["n_frames"] / float(info["fps"])
    warm = _warm_seconds(calls)
    return {"video_seconds": video_s, "fps": float(info["fps"]), "demo_generation_s": made,
            "config": f"ExtractConfig(asr='always', detect_every={detect_every}): face "
                      "landmarker on every k-th frame, voice with Whisper embeddings, "
                      "Whisper ASR, text with MiniLM",
            "detect_every": detect_every, "face_deviation_from_every_frame": deviation,
            "calls": calls, "first_call_s": calls[0]["total_s"], "warm_s": warm,
            "real_time_factor": warm / video_s,
            "target": "60 s of video in under 30 s (real-time factor <= 0.5)",
            "target_met": bool(warm / video_s <= 0.5)}


def _warm_seconds(calls: list[dict]) -> float:
    """The median total of the calls after the first (the first compiles)."""
    return float(np.median([c["total_s"] for c in calls[1:] or calls]))


def bench_extract_against(rev: str, seconds: float = 60.0, detect_every: int = 1,
                          repeats: int = 2) -> dict:
    """``bench_extract`` of the code at git revision ``rev`` (a temporary worktree, in a
    child process) and of this code, back to back on the same generated video, each with
    ``repeats`` calls, and the ratio of their warm seconds (medians of the warm calls,
    taken here for both sides): before/after figures from one sitting."""
    repo = Path(__file__).resolve().parent.parent
    out: dict = {"baseline_rev": rev}
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=repo,
                       check=True, capture_output=True)
        try:
            code = ("import json; from experiments.bench import bench_extract; "
                    f"print(json.dumps(bench_extract({seconds!r}, {repeats!r})))")
            proc = subprocess.run([sys.executable, "-c", code], cwd=tree, text=True,
                                  capture_output=True,
                                  env={**os.environ, "PYTHONPATH": str(tree)})
            if proc.returncode:
                raise RuntimeError(f"baseline {rev} failed: {proc.stderr[-2000:]}")
            out["baseline"] = json.loads(proc.stdout.strip().splitlines()[-1])
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=repo,
                           capture_output=True)
    out["load_average_between"] = list(os.getloadavg())
    out["current"] = bench_extract(seconds, repeats, detect_every=detect_every)
    out["baseline"]["warm_s"] = _warm_seconds(out["baseline"]["calls"])
    out["speedup"] = out["baseline"]["warm_s"] / out["current"]["warm_s"]
    return out


def bench_stream(checkpoint: str | Path, seconds: float = 60.0) -> dict:
    """``ahjax.stream`` on one ``seconds``-long demo video, twice back to back with the
    encoders loaded once: played in real time (the delay from a frame's capture to the
    line that carries its A/H probability: median, p95, max; the degradation levels the
    stream chose) and as fast as possible (the live pipeline's real-time factor: wall
    seconds per second of video). Word error rate of the streamed and of the offline
    transcript against the demo's script, for the cost of streaming speech."""
    out: dict = {"video_seconds": seconds, "checkpoint": str(checkpoint), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        path = demo_video(tmp, seconds)
        script = load_bah(Path(tmp) / "demo").videos[0].transcript
        face, whisper = FaceEncoder(), WhisperJax.load()
        for name, realtime in (("realtime", True), ("as_fast_as_possible", False)):
            load = list(os.getloadavg())
            lines = list(live.stream(path, checkpoint, live.StreamConfig(realtime=realtime),
                                     face_encoder=face, whisper=whisper))
            s = lines[-1]["summary"]
            text = " ".join(w["word"] for ln in lines for w in ln["words"])
            worst = max((ln["latency_s"]["max"] for ln in lines if ln["latency_s"]), default=None)
            out["runs"][name] = {
                "load_average_before": load, "wall_s": s["wall_s"],
                "real_time_factor": s["real_time_factor"],
                "latency_median_s": s["latency_median_s"], "latency_p95_s": s["latency_p95_s"],
                "latency_max_s": worst,
                "levels": s["levels"], "whisper_passes": s["whisper_passes"],
                "seconds": s["seconds"], "warm_up_s": s["warm_up_s"],
                "wer_vs_script": wer(script, text), "lines": len(lines)}
        offline, _ = transcribe_speech(whisper, load_audio(path))
        out["offline_wer_vs_script"] = wer(script, offline.text)
    out["notes"] = ("real time: latency = time a frame's line was yielded minus the frame's "
                    "capture time on the playback clock; as fast as possible: the real-time "
                    "factor is wall seconds / video seconds (encoders loaded and compiled "
                    "before, warm_up_s)")
    return out


def bench_extract_workers(workers: int) -> dict:
    """Level-1 extraction of the quick demo's videos (8 videos of 6-8 s; the dataset's
    own transcripts, face every second frame, no voice embeddings: the quick extraction)
    with 1 worker and then with ``workers`` Ray workers, back to back from empty stores:
    wall seconds (model loading and, for Ray, its start included), real-time factor
    (wall / video seconds) and the speed-up, from this run only. The persistent JAX
    compilation cache is on for both, as ``python -m ahjax extract`` has it."""
    enable_compilation_cache()   # as the extraction command and every Ray worker do
    with contextlib.redirect_stdout(sys.stderr):   # stdout carries only the JSON report
        root = demo_root(QUICK_DATA)
    out: dict = {"videos": None, "config": "QUICK_EXTRACT on the quick demo (level1_affect.dataset)",
                 "runs": {}}
    for w in (1, workers):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            summary = extract_dataset(root, Path(tmp) / "store", QUICK_EXTRACT,
                                      progress=False, workers=w)
            wall = time.perf_counter() - t0
        if summary["failed"]:
            raise RuntimeError(f"extraction failed for {sorted(summary['failed'])[:3]}")
        out["videos"] = summary["done"]
        out["video_seconds"] = summary["video_seconds"]
        out["runs"][str(w)] = {"wall_s": wall,
                               "real_time_factor": wall / summary["video_seconds"]}
    one, many = out["runs"]["1"]["wall_s"], out["runs"][str(workers)]["wall_s"]
    out["speedup"] = one / many
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run the benchmark, print JSON."""
    parser = argparse.ArgumentParser(prog="python -m experiments.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 timed steps instead of 3")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated names ('' for none); known: " + ",".join(MODELS))
    parser.add_argument("--frames", type=int, default=FRAMES,
                        help=f"frames per window (default {FRAMES}; reference ratios only then)")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"windows per batch ({BATCH})")
    parser.add_argument("--extract", action="store_true",
                        help="also time level-1 extraction of a 60 s demo video (ASR included)")
    parser.add_argument("--extract-seconds", type=float, default=60.0)
    parser.add_argument("--extract-baseline", metavar="REV", default=None,
                        help="with --extract: time the extractor of git revision REV first, "
                             "on the same video, and report the speed-up of this run")
    parser.add_argument("--extract-detect-every", type=int, default=1, metavar="K",
                        help="with --extract: face landmarker on every K-th frame")
    parser.add_argument("--extract-repeats", type=int, default=2, metavar="N",
                        help="with --extract: calls per side, the first compiling; the warm "
                             "figure is the median of the others (default 2)")
    parser.add_argument("--extract-workers", type=int, default=0, metavar="N",
                        help="also time extraction of the quick demo with 1 and with N Ray "
                             "workers, back to back (needs the [distributed] extra)")
    parser.add_argument("--stream", metavar="RUN", default=None,
                        help="also time ahjax.stream on a 60 s demo video with this two_level "
                             "run's causal model: real-time latency and real-time factor")
    parser.add_argument("--stream-minutes", type=float, default=None, metavar="M",
                        help="with --stream RUN: a whole session instead: an M-minute source "
                             "of demo videos streamed as fast as possible and in real time, "
                             "per-minute processing time, latency and RSS")
    parser.add_argument("--stream-source", default=None, metavar="FILE",
                        help="with --stream-minutes: this video instead of the demo session")
    parser.add_argument("--stream-baseline", default=None, metavar="REV",
                        help="with --stream-minutes: measure git revision REV first, same sitting")
    parser.add_argument("--stream-modes", default="fast,realtime",
                        help="with --stream-minutes: fast, realtime or both (default)")
    parser.add_argument("--stream-compare", default=None, metavar="REV",
                        help="with --stream RUN: the final files of git revision REV's stream "
                             "and of this one on a 60 s demo video, with and without ASR")
    parser.add_argument("--reference", metavar="DIR", default=None,
                        help="a folder with the reference PyTorch code and bench_ref.py: time "
                             "its fusion models and ours side by side, ratios from this run")
    parser.add_argument("--profile", action="store_true",
                        help="instead of throughput: where each model's training step spends "
                             "its time (forward, backward, optimiser, rest; XLA's flops)")
    parser.add_argument("--rounds", type=int, default=1, metavar="N",
                        help="with --reference: N alternated rounds (reference, ours); "
                             "ratios as medians with their spread")
    parser.add_argument("--variants", default="default", metavar="NAME=FLAGS;...",
                        help="with --reference: XLA settings our side runs under, each "
                             "measured after the same reference run (default: none)")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for each side of --reference (default 2)")
    args = parser.parse_args(argv)
    steps = args.steps or (2 if args.quick else 3)
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {sorted(MODELS)}")
    report = {"device": str(jax.devices()[0].device_kind), "n_devices": jax.device_count(),
              "cpu_threads": psutil.cpu_count(), "load_average": list(os.getloadavg()),
              "models": {}}
    # Start the backend and the compiler outside any measurement: otherwise the first model
    # alone would be charged their one-time setup time and memory.
    jax.block_until_ready(jax.jit(lambda x: x + 1)(np.zeros(1, np.float32)))
    if args.profile:
        report["profile"] = {n: profile_model(n, steps, args.batch, args.frames) for n in names}
        report["matmul_peak"] = matmul_peak(steps=max(steps, 5))
        print(json.dumps(report, indent=2))
        return 0
    if args.reference:
        if args.rounds < 1:
            parser.error(f"--rounds {args.rounds}: must be at least 1")
        try:
            variants = parse_variants(args.variants)
        except ValueError as err:
            parser.error(str(err))
        report["side_by_side"] = side_by_side(
            args.reference, names, steps, args.batch, args.frames, args.threads, args.rounds,
            variants, log=lambda msg: print(msg, file=sys.stderr, flush=True))
        report["rounds"] = args.rounds
        report["threads"] = args.threads
        report["load_average_after"] = list(os.getloadavg())
        names = [n for n in names if not MODELS[n].reference]   # measured above
    for name in names:
        report["models"][name] = bench_model(name, steps, args.batch, args.frames)
    if args.extract and args.extract_baseline:
        report["extraction"] = bench_extract_against(args.extract_baseline, args.extract_seconds,
                                                     args.extract_detect_every, args.extract_repeats)
    elif args.extract:
        report["extraction"] = bench_extract(args.extract_seconds, args.extract_repeats,
                                             detect_every=args.extract_detect_every)
    if args.extract_workers:
        report["extraction_workers"] = bench_extract_workers(args.extract_workers)
    if args.stream and (args.stream_minutes or args.stream_source):
        def log(name, res):   # each part as it finishes: a long run keeps what it measured
            print(json.dumps({name: res}), file=sys.stderr, flush=True)
        report["long_stream"] = long_stream.bench(
            args.stream, args.stream_minutes or 0.0, args.stream_source, args.stream_baseline,
            tuple(m for m in args.stream_modes.split(",") if m), log)
    elif args.stream and args.stream_compare:
        with tempfile.TemporaryDirectory() as tmp:
            path = demo_video(tmp, args.extract_seconds)
            report["stream_files"] = [
                long_stream.files_against(args.stream_compare, path, args.stream, asr)
                for asr in (False, True)]
    elif args.stream:
        report["stream"] = bench_stream(args.stream, args.extract_seconds)
    report["notes"] = NOTES
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
