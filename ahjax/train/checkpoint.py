"""Checkpoints through orbax: array state plus a JSON record, keeping the N latest and the best.

Each checkpoint step holds two items, written together by one ``CheckpointManager``:
``state`` (a pytree of arrays: parameters, batch statistics, optimiser state) through
``StandardSave``, and ``meta`` (a JSON dict: epoch, data-iterator position, best validation
score, history) through ``JsonSave``. Retention is the union of "the ``keep`` latest" and
"the ``keep_best`` with the highest ``best_metric``"; only checkpoints saved with metrics
(end of epoch) compete for best, so mid-epoch checkpoints are kept only while recent.
Saves are synchronous so a crash right after ``save`` returns cannot lose that checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp


class Checkpointer:
    """Save and restore ``(state pytree, meta dict)`` pairs by integer step under ``directory``."""

    def __init__(self, directory: str | Path, *, keep: int = 2, keep_best: int = 1,
                 best_metric: str = "val_AP"):
        self.directory = Path(directory).absolute()
        self.best_metric = best_metric
        policy = pp.AnyPreservationPolicy([
            pp.LatestN(n=keep),
            pp.BestN(get_metric_fn=lambda m: float(m[best_metric]), n=keep_best,
                     keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=False, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "meta"))

    def save(self, step: int, state: Any, meta: Mapping, metrics: Mapping | None = None) -> None:
        """Write checkpoint ``step``; ``metrics`` (with ``best_metric``) make it a best candidate.

        ``state`` must be a pytree of arrays with string/int dict keys (e.g.
        ``nnx.to_pure_dict(...)``); ``meta`` must be JSON-serialisable.
        """
        if metrics is not None and self.best_metric not in metrics:
            raise KeyError(f"metrics for step {step} lack {self.best_metric!r}: {sorted(metrics)}")
        self._manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    meta=ocp.args.JsonSave(dict(meta))),
            metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
            force=True)
        self._manager.wait_until_finished()

    def latest_step(self) -> int | None:
        """The newest step on disk, or None when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every step still on disk, ascending."""
        return sorted(self._manager.all_steps())

    def restore(self, step: int | None, target: Any) -> tuple[Any, dict]:
        """``(state, meta)`` of ``step`` (the latest when None) shaped like ``target``.

        ``target`` is a pytree with the saved structure (arrays or ``ShapeDtypeStruct``);
        restored arrays take its dtypes and, where it has them, its shardings.
        """
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        out = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                          meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"])

    def close(self) -> None:
        """Finish pending work and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
