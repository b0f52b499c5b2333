"""Video-level visual baselines in Flax NNX: Video-FocalNet T/S/B and a CLIP-style video model.

Both read 8 face crops sampled across the video (:func:`sample_frame_indices`) as
``(B, T, H, W, 3)`` normalised images and return ``(logits (B, 2), aux{"features"})``.
Video-FocalNet has spatio-temporal focal modulation; the CLIP-style model compares a
temporal transformer's video embedding with class-prompt embeddings (learned, or MiniLM
through a projection). Both in detail: docs/paper_setups.md, "Video-level models".
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ahjax.core.dropout import Dropout
from baselines.backbones import EncoderBlock
from level1_affect import minilm

NUM_FRAMES = 8
PROMPTS = ("a person who is neither ambivalent nor hesitant",
           "a person who is ambivalent or hesitant")


def sample_frame_indices(n_frames: int, num: int = NUM_FRAMES, *,
                         rng: np.random.Generator | None = None) -> np.ndarray:
    """``num`` frame indices spread over a video of ``n_frames`` frames with one stride.

    The stride is ``n_frames // num`` (at least 1); the clip of ``num`` frames at that
    stride is centred in the video, or (with ``rng``, for training) placed at a random
    start. A video shorter than ``num`` frames repeats its last frame.
    """
    if n_frames < 1:
        raise ValueError("a video needs at least one frame")
    stride = max(n_frames // num, 1)
    span = stride * (num - 1) + 1
    slack = max(n_frames - span, 0)
    start = int(rng.integers(0, slack + 1)) if rng is not None else slack // 2
    return np.minimum(start + stride * np.arange(num), n_frames - 1)


# ---------------------------------------------------------------------------------------
# Video-FocalNet


@dataclasses.dataclass(frozen=True)
class FocalNetConfig:
    """Sizes of a (Video-)FocalNet; defaults are Video-FocalNet-T."""
    depths: tuple[int, ...] = (2, 2, 6, 2)
    embed_dim: int = 96
    focal_level: int = 2
    focal_window: int = 3
    focal_factor: int = 2
    mlp_ratio: float = 4.0
    drop_path: float = 0.2
    patch_size: int = 4
    num_frames: int = NUM_FRAMES
    temporal: bool = True             # False: FocalNet on each frame, features averaged
    depthwise_temporal: bool = False  # the official temporal convs are full 1-D convs


SIZES = {
    "tiny": FocalNetConfig(depths=(2, 2, 6, 2), embed_dim=96, drop_path=0.2),
    "small": FocalNetConfig(depths=(2, 2, 18, 2), embed_dim=96, drop_path=0.3),
    "base": FocalNetConfig(depths=(2, 2, 18, 2), embed_dim=128, drop_path=0.5),
}
# Every code path at a few thousand weights, for quick configs and tests; the three keep
# the T < S < B ordering (S deeper in stage 3, B also wider).
TINY = {"tiny": FocalNetConfig(depths=(1, 1, 1, 1), embed_dim=8, drop_path=0.1),
        "small": FocalNetConfig(depths=(1, 1, 2, 1), embed_dim=8, drop_path=0.1),
        "base": FocalNetConfig(depths=(1, 1, 2, 1), embed_dim=12, drop_path=0.1)}


class FocalModulation(nnx.Module):
    """Spatio-temporal focal modulation on tokens (B*T, H, W, C)."""

    def __init__(self, dim: int, cfg: FocalNetConfig, *, rngs: nnx.Rngs):
        L = cfg.focal_level
        self.cfg, self.dim = cfg, dim
        self.f = nnx.Linear(dim, 2 * dim + L + 1, rngs=rngs)
        kernels = [cfg.focal_factor * k + cfg.focal_window for k in range(L)]
        self.focal = nnx.List([nnx.Conv(dim, dim, (k, k), feature_group_count=dim,
                                        use_bias=False, rngs=rngs) for k in kernels])
        self.h = nnx.Linear(dim, dim, rngs=rngs)   # the 1x1 conv of the reference
        self.proj = nnx.Linear(dim, dim, rngs=rngs)
        if cfg.temporal:
            self.f_t = nnx.Linear(dim, dim + L + 1, rngs=rngs)
            groups = dim if cfg.depthwise_temporal else 1
            self.focal_t = nnx.List([nnx.Conv(dim, dim, (k,), feature_group_count=groups,
                                              use_bias=False, rngs=rngs) for k in kernels])
            self.h_t = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x):
        bt, hh, ww, c = x.shape
        L = self.cfg.focal_level
        q, ctx, gates = jnp.split(self.f(x), [c, 2 * c], axis=-1)
        ctx_all = 0.0
        for l, conv in enumerate(self.focal):
            ctx = nnx.gelu(conv(ctx))          # each level widens the receptive field
            ctx_all = ctx_all + ctx * gates[..., l:l + 1]
        glob = nnx.gelu(ctx.mean(axis=(1, 2), keepdims=True))
        modulator = self.h(ctx_all + glob * gates[..., L:])
        out = q * modulator
        if self.cfg.temporal:
            t = self.cfg.num_frames
            b = bt // t
            # (B*T, H, W, C) -> (B*H*W, T, C): every spatial position is a time series.
            xt = x.reshape(b, t, hh, ww, c).transpose(0, 2, 3, 1, 4).reshape(-1, t, c)
            ctx_t, gates_t = jnp.split(self.f_t(xt), [c], axis=-1)
            all_t = 0.0
            for l, conv in enumerate(self.focal_t):
                ctx_t = nnx.gelu(conv(ctx_t))
                all_t = all_t + ctx_t * gates_t[..., l:l + 1]
            glob_t = nnx.gelu(ctx_t.mean(axis=1, keepdims=True))
            mod_t = self.h_t(all_t + glob_t * gates_t[..., L:])
            mod_t = mod_t.reshape(b, hh, ww, t, c).transpose(0, 3, 1, 2, 4).reshape(bt, hh, ww, c)
            out = out * mod_t
        return self.proj(out)


class FocalBlock(nnx.Module):
    """Pre-LN residual block: focal modulation, then an MLP, each with stochastic depth."""

    def __init__(self, dim: int, cfg: FocalNetConfig, drop_path: float, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
        self.mod = FocalModulation(dim, cfg, rngs=rngs)
        self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
        hidden = int(dim * cfg.mlp_ratio)
        self.fc1 = nnx.Linear(dim, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, dim, rngs=rngs)
        # Dropout broadcast over every axis but the batch drops whole residual branches per
        # sample and rescales by 1/(1-p): exactly stochastic depth.
        self.drop_path = Dropout(drop_path, broadcast_dims=(1, 2, 3), rngs=rngs)

    def __call__(self, x, train: bool):
        x = x + self.drop_path(self.mod(self.ln1(x)), deterministic=not train)
        y = self.fc2(nnx.gelu(self.fc1(self.ln2(x))))
        return x + self.drop_path(y, deterministic=not train)


class PatchEmbed(nnx.Module):
    """Non-overlapping k x k conv patches followed by LayerNorm (FocalNet's stem and downsampler)."""

    def __init__(self, cin: int, cout: int, k: int, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (k, k), strides=k, padding="VALID", rngs=rngs)
        self.norm = nnx.LayerNorm(cout, rngs=rngs)

    def __call__(self, x):
        return self.norm(self.conv(x))


class VideoFocalNet(nnx.Module):
    """Video-FocalNet: (B, T, H, W, 3) -> (logits (B, num_classes), aux{"features": (B, D)})."""

    def __init__(self, cfg: FocalNetConfig = SIZES["tiny"], num_classes: int = 2, *,
                 rngs: nnx.Rngs):
        self.cfg = cfg
        dims = [cfg.embed_dim * 2 ** i for i in range(len(cfg.depths))]
        rates = np.linspace(0.0, cfg.drop_path, sum(cfg.depths)).tolist()  # deeper drops more
        self.stem = PatchEmbed(3, dims[0], cfg.patch_size, rngs=rngs)
        stages, downs, r = [], [], 0
        for i, (dim, depth) in enumerate(zip(dims, cfg.depths)):
            stages.append(nnx.List([FocalBlock(dim, cfg, rates[r + j], rngs=rngs)
                                    for j in range(depth)]))
            r += depth
            if i + 1 < len(dims):
                downs.append(PatchEmbed(dim, dims[i + 1], 2, rngs=rngs))
        self.stages, self.downs = nnx.List(stages), nnx.List(downs)
        self.norm = nnx.LayerNorm(dims[-1], rngs=rngs)
        self.feature_dim = dims[-1]
        self.head = nnx.Linear(dims[-1], num_classes, rngs=rngs)

    def __call__(self, clips, *, train: bool = False):
        b, t = clips.shape[:2]
        if clips.ndim != 5 or (self.cfg.temporal and t != self.cfg.num_frames):
            raise ValueError(f"expected (B, {self.cfg.num_frames}, H, W, 3) clips, got {clips.shape}")
        x = self.stem(clips.reshape((b * t,) + clips.shape[2:]))
        for i, blocks in enumerate(self.stages):
            for blk in blocks:
                x = blk(x, train)
            if i < len(self.downs):
                x = self.downs[i](x)
        feats = self.norm(x).mean(axis=(1, 2)).reshape(b, t, -1).mean(axis=1)
        return self.head(feats), {"features": feats}


def video_focalnet(size: str = "tiny", num_classes: int = 2, *, rngs: nnx.Rngs,
                   reduced: bool = False, **overrides) -> VideoFocalNet:
    """Video-FocalNet ``tiny``/``small``/``base``; ``reduced`` gives the test-sized variant."""
    if size not in SIZES:
        raise KeyError(f"unknown Video-FocalNet size {size!r}; known: {list(SIZES)}")
    base = (TINY if reduced else SIZES)[size]
    return VideoFocalNet(dataclasses.replace(base, **overrides), num_classes, rngs=rngs)


# ---------------------------------------------------------------------------------------
# CLIP-style video classifier


def prompt_embeddings(prompts: Sequence[str] = PROMPTS) -> np.ndarray:
    """(len(prompts), 384) MiniLM sentence embeddings of the class prompts (loads MiniLM)."""
    return np.asarray(minilm.encode_sentences(list(prompts)), np.float32)


class ClipStyleVideo(nnx.Module):
    """Frame encoder -> projection -> temporal transformer -> mean pool; cosine logits vs classes.

    ``class_text`` (num_classes, d_text), when given, are fixed prompt embeddings mapped into
    the joint space by a learned projection; otherwise the class embeddings are learned
    parameters. ``aux`` holds the video embedding (``features``), per-frame embeddings and
    the class embeddings, all L2-normalised.
    """

    def __init__(self, frame_encoder: nnx.Module, *, embed_dim: int = 256,
                 num_frames: int = NUM_FRAMES, temporal_layers: int = 1, heads: int = 4,
                 class_text: np.ndarray | None = None, num_classes: int = 2, rngs: nnx.Rngs):
        self.encoder = frame_encoder
        self.project = nnx.Linear(frame_encoder.feature_dim, embed_dim, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, num_frames, embed_dim)))
        self.temporal = nnx.List([EncoderBlock(embed_dim, heads, 4.0, 0.0, rngs=rngs)
                                  for _ in range(temporal_layers)])
        if class_text is not None:
            class_text = np.asarray(class_text, np.float32)
            if class_text.shape[0] != num_classes:
                raise ValueError(f"{class_text.shape[0]} prompts for {num_classes} classes")
            self.class_text = nnx.Variable(jnp.asarray(class_text))   # frozen, not a Param
            self.text_proj = nnx.Linear(class_text.shape[1], embed_dim, rngs=rngs)
        else:
            self.class_text = None
            self.class_emb = nnx.Param(jax.random.normal(rngs.params(), (num_classes, embed_dim)))
        self.logit_scale = nnx.Param(jnp.asarray(np.log(1 / 0.07), jnp.float32))  # CLIP's init
        self.feature_dim = embed_dim

    def classes(self) -> jax.Array:
        """(num_classes, embed_dim) L2-normalised class embeddings."""
        emb = (self.text_proj(self.class_text.value) if self.class_text is not None
               else self.class_emb.value)
        return emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)

    def __call__(self, clips, *, train: bool = False):
        b, t = clips.shape[:2]
        _, aux = self.encoder(clips.reshape((b * t,) + clips.shape[2:]), train=train)
        x = self.project(aux["features"]).reshape(b, t, -1) + self.pos.value[:, :t]
        for blk in self.temporal:
            x, _ = blk(x, train)
        frames = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
        video = x.mean(axis=1)
        video = video / jnp.linalg.norm(video, axis=-1, keepdims=True)
        cls = self.classes()
        scale = jnp.exp(jnp.minimum(self.logit_scale.value, np.log(100.0)))  # CLIP's clamp
        return scale * video @ cls.T, {"features": video, "frame_features": frames,
                                       "class_embeddings": cls}
