"""Throughput of the heavy models on whatever accelerator JAX sees: ``python -m experiments.bench_vision``.

The visual backbones (ResNet18-152, APViT-style ViT) on 224x224 face crops, Video-FocalNet
tiny/small/base on 8-frame clips, and the frame-level fusion models (CAN, LFAN, MT, JMT) at
the paper's batch of 4 x 696 frames. For each: parameters, training samples/s (one jitted
SGD-Nesterov step: forward, backward, update), inference samples/s, compile seconds and the
device's peak memory when it reports one. Unlike ``experiments.bench`` it needs only jax,
flax and optax (not the data pipeline), so it runs on a bare GPU image. Prints JSON and
writes it to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from baselines import backbones, fusion, video_level


def _timed(fn, *args, steps: int):
    """(seconds of the first call, mean seconds of ``steps`` later calls)."""
    t0 = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        out = fn(*args)
    jax.block_until_ready(out)
    return first, (time.perf_counter() - t0) / steps, out


def bench_model(model: nnx.Module, inputs, labels, n_samples: int, steps: int,
                frame_logits: bool) -> dict:
    """Train and inference throughput of ``model`` on one fixed batch."""
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.008, 0.9, nesterov=True))
    graphdef, state = nnx.split((model, nnx.Optimizer(model, tx, wrt=nnx.Param)))

    @jax.jit
    def train_step(state, inputs, labels):
        model, opt = nnx.merge(graphdef, state)

        def loss_fn(model):
            logits, _ = model(inputs, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return nnx.state((model, opt)), loss

    @jax.jit
    def infer(state, inputs):
        model, _ = nnx.merge(graphdef, state)
        return model(inputs, train=False)[0]

    def run_train(state):
        return train_step(state, inputs, labels)

    t0 = time.perf_counter()
    state, loss = train_step(state, inputs, labels)
    jax.block_until_ready(loss)
    compile_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        state, loss = train_step(state, inputs, labels)
    jax.block_until_ready(loss)
    train_s = (time.perf_counter() - t0) / steps
    compile_infer, infer_s, _ = _timed(infer, state, inputs, steps=steps)
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return {"params": params, "train_per_s": n_samples / train_s,
            "infer_per_s": n_samples / infer_s, "compile_train_s": compile_train,
            "compile_infer_s": compile_infer, "final_loss": float(loss),
            "unit": "frames" if frame_logits else "samples"}


def _peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def cases(quick: bool):
    """(name, builder, inputs, labels, n_samples, frame_logits) for every benchmarked model."""
    rng = np.random.default_rng(0)
    size, batch = (32, 4) if quick else (224, 32)
    images = jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32)
    img_labels = jnp.asarray(rng.integers(0, 2, batch))
    names = ["resnet18", "apvit"] if quick else ["resnet18", "resnet34", "resnet50",
                                                  "resnet101", "resnet152", "apvit"]
    for name in names:
        over = backbones.TINY[name] if quick else {}
        x = images
        if name == "apvit" and not quick:  # APViT is built for 112x112 crops
            x = jnp.asarray(rng.normal(size=(batch, 112, 112, 3)), jnp.float32)
        yield (name, lambda name=name, over=over: backbones.build_backbone(
            name, 2, rngs=nnx.Rngs(0), **over), x, img_labels, batch, False)
    vbatch, vsize = (2, 32) if quick else (8, 224)
    clips = jnp.asarray(rng.normal(size=(vbatch, 8, vsize, vsize, 3)), jnp.float32)
    clip_labels = jnp.asarray(rng.integers(0, 2, vbatch))
    for size_name in (["tiny"] if quick else ["tiny", "small", "base"]):
        yield (f"video_focalnet_{size_name}",
               lambda s=size_name: video_level.video_focalnet(s, num_classes=2, reduced=quick,
                                                              rngs=nnx.Rngs(0)),
               clips, clip_labels, vbatch, False)
    frames = 96 if quick else 696
    dims = {"video": 512, "audio": 128, "text": 768}
    feats = {m: jnp.asarray(rng.normal(size=(4, frames, d)), jnp.float32) for m, d in dims.items()}
    frame_labels = jnp.asarray(rng.integers(0, 2, (4, frames)))
    cfg = fusion.quick() if quick else fusion.FusionConfig()
    for name in ("can", "lfan", "mt", "jmt"):
        yield (name, lambda name=name: fusion.FUSION_MODELS[name](dims, cfg, nnx.Rngs(0)),
               feats, frame_labels, 4 * frames, True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated model names")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    only = set(filter(None, args.only.split(",")))
    report = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
              "jax": jax.__version__, "models": {}}
    for name, build, inputs, labels, n, frame_logits in cases(args.quick):
        if only and name not in only:
            continue
        try:
            res = bench_model(build(), inputs, labels, n, args.steps, frame_logits)
            res["device_peak_bytes"] = _peak_bytes()
        except Exception as err:  # one model failing (e.g. out of memory) must not hide the rest
            res = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        report["models"][name] = res
        print(name, json.dumps(res), flush=True)
        if args.out:  # after every model, so a run cut short still leaves its figures
            with open(args.out, "w") as f:
                f.write(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
