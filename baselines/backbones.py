"""Frame-level visual backbones of the paper in Flax NNX: ResNet18/34/50/101/152 and APViT.

``model(images (B, H, W, 3) float, *, train) -> (logits (B, num_classes), aux)`` with
``aux["features"]`` (B, D), the vector a video-modality extractor keeps per frame; images
normalised by ``normalize_images``, the head swappable (``replace_head``). ResNets follow
torchvision's v1.5 layout; APViT's IR-50 stem is replaced by a small conv stem (no weights
offline). Details: docs/paper_setups.md, "Visual backbones".
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ahjax.core.dropout import Dropout

# ImageNet statistics: a common normalisation so user weights trained with it fit.
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)

_he = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def normalize_images(images) -> jax.Array:
    """uint8 or [0, 255] float images (..., H, W, 3) -> float32 standardised per channel."""
    x = jnp.asarray(images, jnp.float32) / 255.0
    return (x - MEAN) / STD


# ---------------------------------------------------------------------------------------
# ResNet


class ConvBN(nnx.Module):
    """Bias-free conv with torchvision's symmetric padding, then BatchNorm."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, *,
                 zero_gamma: bool = False, rngs: nnx.Rngs):
        p = kernel // 2
        self.conv = nnx.Conv(cin, cout, (kernel, kernel), strides=stride,
                             padding=((p, p), (p, p)), use_bias=False, kernel_init=_he,
                             rngs=rngs)
        # momentum 0.9 is torch's 0.1 written the other way round.
        self.bn = nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-5, rngs=rngs,
                                scale_init=nnx.initializers.zeros if zero_gamma
                                else nnx.initializers.ones)

    def __call__(self, x, train: bool):
        return self.bn(self.conv(x), use_running_average=not train)


class BasicBlock(nnx.Module):
    """Two 3x3 convs with a residual (ResNet18/34)."""
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, *, zero_gamma: bool, rngs: nnx.Rngs):
        self.a = ConvBN(cin, width, 3, stride, rngs=rngs)
        self.b = ConvBN(width, width, 3, 1, zero_gamma=zero_gamma, rngs=rngs)
        self.short = (ConvBN(cin, width, 1, stride, rngs=rngs)
                      if stride != 1 or cin != width else None)

    def __call__(self, x, train: bool):
        y = self.b(nnx.relu(self.a(x, train)), train)
        return nnx.relu(y + (x if self.short is None else self.short(x, train)))


class Bottleneck(nnx.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a residual (ResNet50/101/152)."""
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, *, zero_gamma: bool, rngs: nnx.Rngs):
        out = width * self.expansion
        self.a = ConvBN(cin, width, 1, 1, rngs=rngs)
        self.b = ConvBN(width, width, 3, stride, rngs=rngs)
        self.c = ConvBN(width, out, 1, 1, zero_gamma=zero_gamma, rngs=rngs)
        self.short = ConvBN(cin, out, 1, stride, rngs=rngs) if stride != 1 or cin != out else None

    def __call__(self, x, train: bool):
        y = self.c(nnx.relu(self.b(nnx.relu(self.a(x, train)), train)), train)
        return nnx.relu(y + (x if self.short is None else self.short(x, train)))


class ResNet(nnx.Module):
    """ResNet: 7x7/2 stem, 3x3/2 max-pool, four stages (strides 1, 2, 2, 2), global pool, head."""

    def __init__(self, block: type, stage_depths: Sequence[int], num_classes: int = 1000, *,
                 width: int = 64, zero_gamma: bool = False, rngs: nnx.Rngs):
        if len(stage_depths) != 4 or min(stage_depths) < 1:
            raise ValueError(f"stage_depths must be 4 positive ints, got {stage_depths}")
        self.stem = ConvBN(3, width, 7, 2, rngs=rngs)
        blocks, cin = [], width
        for i, depth in enumerate(stage_depths):
            w = width * 2 ** i
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(cin, w, stride, zero_gamma=zero_gamma, rngs=rngs))
                cin = w * block.expansion
        self.blocks = nnx.List(blocks)
        self.feature_dim = cin
        self.head = nnx.Linear(cin, num_classes, rngs=rngs)

    def __call__(self, images, *, train: bool = False):
        assert images.ndim == 4 and images.shape[-1] == 3, images.shape
        x = nnx.relu(self.stem(images, train))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for blk in self.blocks:
            x = blk(x, train)
        feats = x.mean(axis=(1, 2))
        return self.head(feats), {"features": feats}


RESNET_DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
                 50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3)),
                 152: (Bottleneck, (3, 8, 36, 3))}


def resnet(depth: int, num_classes: int = 1000, *, rngs: nnx.Rngs,
           stage_depths: Sequence[int] | None = None, width: int = 64,
           zero_gamma: bool = False) -> ResNet:
    """ResNet-``depth`` (18/34/50/101/152); ``stage_depths``/``width`` give reduced variants."""
    block, depths = RESNET_DEPTHS[depth]
    return ResNet(block, stage_depths or depths, num_classes, width=width,
                  zero_gamma=zero_gamma, rngs=rngs)


# ---------------------------------------------------------------------------------------
# APViT-style vision transformer


@dataclasses.dataclass(frozen=True)
class APViTConfig:
    """Sizes of the APViT-style transformer (defaults: APViT's ViT-small on 112x112 faces)."""
    image_size: int = 112
    stem_channels: tuple[int, ...] = (64, 128, 256)   # strided 3x3 convs standing in for IR-50
    patch_size: int = 1           # patch size on the stem's map (each map cell is one patch)
    dim: int = 384
    depth: int = 8
    heads: int = 8
    mlp_ratio: float = 3.0
    keep_patches: int = 160       # APP: patches kept out of (112/8)^2 = 196
    atp_layers: tuple[int, ...] = (4, 6)   # ATP after these layers ...
    atp_keep: tuple[int, ...] = (120, 80)  # ... keeping this many patch tokens
    dropout: float = 0.1

    def num_patches(self) -> int:
        side = self.image_size // (2 ** len(self.stem_channels)) // self.patch_size
        return side * side


class EncoderBlock(nnx.Module):
    """Pre-LN transformer block that also returns the head-averaged class-token attention."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, *, rngs: nnx.Rngs):
        self.heads = heads
        self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
        self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, rngs=rngs)
        self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nnx.Linear(dim, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, dim, rngs=rngs)
        self.drop = Dropout(dropout, rngs=rngs)

    def __call__(self, x, train: bool):
        b, n, d = x.shape
        qkv = self.qkv(self.ln1(x)).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d // self.heads)
        att = jax.nn.softmax(att, axis=-1)
        y = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, n, d)
        x = x + self.drop(self.proj(y), deterministic=not train)
        x = x + self.drop(self.fc2(nnx.gelu(self.fc1(self.ln2(x)))), deterministic=not train)
        # What the class token (index 0) attends to, over the patch tokens: ATP's score.
        return x, att[:, :, 0, 1:].mean(axis=1)


def keep_top_k(tokens: jax.Array, scores: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The ``k`` highest-scoring tokens (B, N, D) -> (B, k, D), in their original order.

    Returns ``(kept tokens, kept indices (B, k))``. Sorting the indices keeps the spatial
    order, so position information already added to the tokens stays meaningful.
    """
    if not 0 < k <= tokens.shape[1]:
        raise ValueError(f"cannot keep {k} of {tokens.shape[1]} tokens")
    _, idx = jax.lax.top_k(jax.lax.stop_gradient(scores), k)
    idx = jnp.sort(idx, axis=-1)
    return jnp.take_along_axis(tokens, idx[..., None], axis=1), idx


class APViT(nnx.Module):
    """Conv stem -> APP top-k patches -> ViT with ATP token dropping -> class token -> head."""

    def __init__(self, config: APViTConfig = APViTConfig(), num_classes: int = 7, *,
                 rngs: nnx.Rngs):
        c = config
        if len(c.atp_layers) != len(c.atp_keep):
            raise ValueError("atp_layers and atp_keep must have the same length")
        keeps = (c.keep_patches,) + tuple(c.atp_keep)
        if any(b > a for a, b in zip(keeps, keeps[1:])) or c.keep_patches > c.num_patches():
            raise ValueError(f"kept tokens must not grow: {c.num_patches()} -> {keeps}")
        self.config = c
        convs, cin = [], 3
        for cout in c.stem_channels:
            convs.append(ConvBN(cin, cout, 3, 2, rngs=rngs))
            cin = cout
        self.stem = nnx.List(convs)
        self.patch = nnx.Conv(cin, c.dim, (c.patch_size, c.patch_size), strides=c.patch_size,
                              rngs=rngs)
        self.cls = nnx.Param(jnp.zeros((1, 1, c.dim)))
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, c.num_patches(), c.dim)))
        self.blocks = nnx.List([EncoderBlock(c.dim, c.heads, c.mlp_ratio, c.dropout, rngs=rngs)
                                for _ in range(c.depth)])
        self.norm = nnx.LayerNorm(c.dim, rngs=rngs)
        self.feature_dim = c.dim
        self.head = nnx.Linear(c.dim, num_classes, rngs=rngs)

    def __call__(self, images, *, train: bool = False):
        assert images.ndim == 4 and images.shape[-1] == 3, images.shape
        c = self.config
        x = images
        for conv in self.stem:
            x = nnx.relu(conv(x, train))
        # APP: APViT scores each position of the CNN map by its channel-summed activation;
        # a patch scores the mean over its positions.
        p = c.patch_size
        amap = x.sum(-1)
        hp, wp = amap.shape[1] // p, amap.shape[2] // p
        app_score = amap[:, :hp * p, :wp * p].reshape(-1, hp, p, wp, p).mean((2, 4))
        app_score = app_score.reshape(x.shape[0], -1)
        tokens = self.patch(x)
        b, h, w, d = tokens.shape
        if h * w != c.num_patches():
            raise ValueError(f"images of {images.shape[1:3]} give {h}x{w} patches; the "
                             f"model was built for image_size {c.image_size}")
        tokens = tokens.reshape(b, h * w, d) + self.pos.value
        tokens, kept = keep_top_k(tokens, app_score, c.keep_patches)
        x = jnp.concatenate([jnp.broadcast_to(self.cls.value, (b, 1, d)), tokens], axis=1)
        for i, blk in enumerate(self.blocks):
            x, cls_att = blk(x, train)
            if i + 1 in c.atp_layers:   # ATP: drop the patch tokens the class token ignores
                k = c.atp_keep[c.atp_layers.index(i + 1)]
                patches, idx = keep_top_k(x[:, 1:], cls_att, k)
                kept = jnp.take_along_axis(kept, idx, axis=1)
                x = jnp.concatenate([x[:, :1], patches], axis=1)
        feats = self.norm(x)[:, 0]
        return self.head(feats), {"features": feats, "kept_patches": kept}


# ---------------------------------------------------------------------------------------
# Registry


def _resnet_builder(depth: int) -> Callable[..., ResNet]:
    def build(num_classes: int = 1000, *, rngs: nnx.Rngs, **overrides) -> ResNet:
        return resnet(depth, num_classes, rngs=rngs, **overrides)
    build.__doc__ = f"ResNet{depth}; overrides: stage_depths, width, zero_gamma."
    return build


def _apvit(num_classes: int = 7, *, rngs: nnx.Rngs, **overrides) -> APViT:
    """APViT-style ViT; overrides are :class:`APViTConfig` fields."""
    return APViT(APViTConfig(**overrides), num_classes, rngs=rngs)


# Name -> builder(num_classes, *, rngs, **overrides). A plain dict, as scenic's ALL_MODELS.
BACKBONES: dict[str, Callable[..., nnx.Module]] = {
    **{f"resnet{d}": _resnet_builder(d) for d in RESNET_DEPTHS},
    "apvit": _apvit,
}

# Reduced variants used by quick configs and tests: every code path, a few thousand weights.
TINY = {
    **{f"resnet{d}": {"stage_depths": (1, 1, 1, 1), "width": 8} for d in RESNET_DEPTHS},
    "apvit": {"image_size": 32, "stem_channels": (8, 16), "dim": 16, "depth": 2, "heads": 2,
              "mlp_ratio": 2.0, "keep_patches": 48, "atp_layers": (1,), "atp_keep": (32,),
              "dropout": 0.0},
}


def build_backbone(name: str, num_classes: int, *, rngs: nnx.Rngs, **overrides) -> nnx.Module:
    """The backbone registered as ``name`` (see ``BACKBONES``)."""
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    return BACKBONES[name](num_classes, rngs=rngs, **overrides)


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def set_compute_dtype(model: nnx.Module, dtype: str) -> nnx.Module:
    """Mixed precision: every convolution, dense and normalisation layer of ``model``
    computes in ``dtype`` ("float32" or "bfloat16") while the parameters and batch-norm
    statistics stay float32 (the optimiser updates float32 weights; normalisation
    statistics are reduced in float32 by flax). Returns ``model``, changed in place."""
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype {dtype!r}: one of {', '.join(COMPUTE_DTYPES)}")
    for _, module in nnx.iter_graph(model):
        if isinstance(module, (nnx.Conv, nnx.Linear, nnx.LayerNorm, nnx.BatchNorm)):
            module.dtype = COMPUTE_DTYPES[dtype]
    return model


def replace_head(model: nnx.Module, num_classes: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """Give ``model`` a fresh ``num_classes`` head (fine-tuning after pretraining)."""
    model.head = nnx.Linear(model.feature_dim, num_classes, rngs=rngs)
    return model


def count_params(build: Callable[[], nnx.Module]) -> int:
    """Trainable parameters of ``build()``, counted abstractly (nothing is allocated)."""
    abstract = nnx.eval_shape(build)
    return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))))
