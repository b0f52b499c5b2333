"""Checkpoints through orbax: array state plus a JSON record, keeping the N latest and the best.

Each checkpoint step holds three items, written together by one ``CheckpointManager``:
``state`` (a pytree of arrays: parameters, batch statistics, optimiser state) through
``StandardSave``, ``meta`` (a JSON dict: epoch, data-iterator position, best validation
score, history) and ``layout`` (the state's leaf paths, shapes and dtypes) through
``JsonSave``. The state's leaves are packed into one flat array per dtype before saving:
orbax spends about a millisecond of CPU per array, which for a few hundred small
parameter and optimiser arrays was most of an epoch of a small model; ``restore`` unpacks
them to the target's structure after checking the layout (and still reads checkpoints
written one array per leaf). Retention is the union of "the ``keep`` latest" and
"the ``keep_best`` with the highest ``best_metric``"; only checkpoints saved with metrics
(end of epoch) compete for best, so mid-epoch checkpoints are kept only while recent.
Saves are synchronous so a crash right after ``save`` returns cannot lose that checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from ahjax.core.assets import sha256_file


class Checkpointer:
    """Save and restore ``(state pytree, meta dict)`` pairs by integer step under ``directory``."""

    def __init__(self, directory: str | Path, *, keep: int = 2, keep_best: int = 1,
                 best_metric: str = "val_AP"):
        self.directory = Path(directory).absolute()
        self.best_metric = best_metric
        def metric(m):
            return float(m[best_metric])

        policy = pp.AnyPreservationPolicy([
            pp.LatestN(n=keep),
            pp.BestN(get_metric_fn=metric, n=keep_best, keep_checkpoints_without_metrics=False),
        ])
        # best_fn makes orbax write each step's metrics to disk. Without it they live only in
        # this manager's memory: a resumed run's manager would see the earlier steps as
        # metric-less, and its first save would delete the best checkpoint.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, best_fn=metric, best_mode="max",
            enable_async_checkpointing=False, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "meta", "layout"))

    def save(self, step: int, state: Any, meta: Mapping, metrics: Mapping | None = None) -> None:
        """Write checkpoint ``step``; ``metrics`` (with ``best_metric``) make it a best candidate.

        ``state`` must be a pytree of host-readable arrays (on one device or replicated)
        with string/int dict keys (e.g. ``nnx.to_pure_dict(...)``); ``meta`` must be
        JSON-serialisable.
        """
        if metrics is not None and self.best_metric not in metrics:
            raise KeyError(f"metrics for step {step} lack {self.best_metric!r}: {sorted(metrics)}")
        packed, layout = _pack(state)
        self._manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(packed),
                                    meta=ocp.args.JsonSave(dict(meta)),
                                    layout=ocp.args.JsonSave(layout)),
            metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
            force=True)
        self._manager.wait_until_finished()

    def latest_step(self) -> int | None:
        """The newest step on disk, or None when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every step still on disk, ascending."""
        return sorted(self._manager.all_steps())

    def best_step(self) -> int | None:
        """The step on disk with the highest ``best_metric`` (None when no step has one).

        On a tie the later step wins. Only steps still on disk are candidates, so the
        answer can always be restored: callers ask here instead of tracking their own best.
        """
        best = None
        for step in self.all_steps():
            metrics = self._manager.metrics(step)
            if not metrics or self.best_metric not in metrics:
                continue
            value = float(metrics[self.best_metric])
            if best is None or value >= best[1]:
                best = (step, value)
        return None if best is None else best[0]

    def restore(self, step: int | None, target: Any) -> tuple[Any, dict]:
        """``(state, meta)`` of ``step`` (the latest when None) shaped like ``target``.

        ``target`` is a pytree with the saved structure (arrays or ``ShapeDtypeStruct``);
        restored arrays take its dtypes and, where it has them, its shardings.
        """
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if not (self.directory / str(step) / "layout").is_dir():  # one array per leaf
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
            out = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                              meta=ocp.args.JsonRestore()))
            return out["state"], dict(out["meta"])
        out = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                          meta=ocp.args.JsonRestore(),
                                          layout=ocp.args.JsonRestore()))
        where = f"{self.directory}/{step}"
        return _unpack(out["state"], out["layout"], target, where), dict(out["meta"])

    def close(self) -> None:
        """Finish pending work and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


PACKED = "__packed_leaves__"


def _layout_of(tree: Any) -> dict:
    paths, shapes, dtypes = [], [], []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        paths.append(jax.tree_util.keystr(path))
        shapes.append(list(np.shape(leaf)))
        dtypes.append(np.dtype(leaf.dtype).name)
    return {"paths": paths, "shapes": shapes, "dtypes": dtypes}


def _pack(state: Any) -> tuple[dict, dict]:
    """``({PACKED: {dtype: flat array}}, layout)``: the leaves of ``state`` concatenated in
    flattening order, one array per dtype."""
    groups: dict[str, list[np.ndarray]] = {}
    for leaf in jax.tree.leaves(state):
        arr = np.asarray(leaf)
        groups.setdefault(arr.dtype.name, []).append(arr.reshape(-1))
    # Orbax refuses zero-size arrays; a dtype whose leaves are all empty has nothing to store.
    packed = {k: np.concatenate(v) for k, v in groups.items() if sum(a.size for a in v)}
    return {PACKED: packed}, _layout_of(state)


def _unpack(packed: Mapping, layout: Mapping, target: Any, where: str) -> Any:
    """The leaves of ``packed`` reshaped into ``target``'s structure, with its dtypes and,
    where it has them, its shardings. Raises ValueError when the layouts differ."""
    want = _layout_of(target)
    if want != dict(layout):
        diff = next((f"{a} {sa} {da} saved vs {b} {sb} {db} asked" for a, sa, da, b, sb, db in zip(
            layout["paths"], layout["shapes"], layout["dtypes"],
            want["paths"], want["shapes"], want["dtypes"]) if (a, sa, da) != (b, sb, db)),
            f"{len(layout['paths'])} leaves saved vs {len(want['paths'])} asked")
        raise ValueError(f"{where}: checkpoint does not match the restore target: {diff}")
    flat = {k: np.asarray(v) for k, v in (packed.get(PACKED) or {}).items()}
    offsets: dict[str, int] = {}

    def take(leaf):
        dtype = np.dtype(leaf.dtype)
        start, size = offsets.get(dtype.name, 0), int(np.prod(np.shape(leaf), dtype=np.int64))
        offsets[dtype.name] = start + size
        source = flat.get(dtype.name, np.zeros(0, dtype))
        arr = source[start:start + size].reshape(np.shape(leaf))
        if isinstance(leaf, np.ndarray):
            return arr.copy()
        sharding = getattr(leaf, "sharding", None)
        return jax.device_put(arr, sharding) if sharding is not None else jax.numpy.asarray(arr)

    return jax.tree.map(take, target)


def save_params(model: nnx.Module, path: str | Path) -> Path:
    """Save a trained model's variables (parameters and statistics, no RNG state) with orbax.

    The folder is written by ``StandardCheckpointer`` and replaced whole when it exists.
    """
    path = Path(path).absolute()
    state = nnx.to_pure_dict(nnx.state(model).split(nnx.RngState, ...)[1])
    if path.exists():
        import shutil
        shutil.rmtree(path)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, state)
    return path


def load_params(build: Callable[[], nnx.Module], path: str | Path) -> nnx.Module:
    """A model from ``build()`` with the variables saved by :func:`save_params` at ``path``."""
    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no saved parameters")
    model = build()
    _, rest = nnx.state(model).split(nnx.RngState, ...)
    target = nnx.to_pure_dict(rest)
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(path, target)
    nnx.replace_by_pure_dict(rest, restored)
    nnx.update(model, rest)
    return model


MANIFEST = "manifest.json"


def write_manifest(folder: str | Path, under: str = "params") -> Path:
    """Write ``folder/manifest.json``: the size and sha256 of every file under
    ``folder/under``, so a damaged copy is caught on load (:func:`verify_manifest`)."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted((folder / under).rglob("*")) if p.is_file()}
    path = folder / MANIFEST
    path.write_text(json.dumps({"files": files}, indent=1))
    return path


def verify_manifest(folder: str | Path) -> bool:
    """Check every file listed in ``folder/manifest.json`` (present, size, sha256).

    Returns False when there is no manifest (a folder saved before manifests); raises
    ValueError naming the first damaged file."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        return False
    try:
        files = json.loads(path.read_text())["files"]
        items = [(name, int(v["size"]), str(v["sha256"])) for name, v in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: unreadable manifest ({type(err).__name__}: {err})") from None
    for name, size, digest in items:
        p = folder / name
        if not p.is_file():
            raise ValueError(f"{p}: missing (listed in {MANIFEST}); the checkpoint is incomplete")
        got = p.stat().st_size
        if got != size:
            raise ValueError(f"{p}: {got} bytes, {size} when saved (truncated or replaced); "
                             "the checkpoint is damaged")
        if sha256_file(p) != digest:
            raise ValueError(f"{p}: contents changed since it was saved (sha256 differs); "
                             "the checkpoint is damaged")
    return True
