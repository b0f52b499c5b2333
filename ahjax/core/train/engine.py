"""The one epoch loop every training in the project runs through.

The frame-level trainer, domain adaptation and image training share from here
:func:`run_epochs` (progress, losses read in groups, one non-finite policy, validation,
one best-epoch rule, a per-epoch hook) and the data-parallel mesh (:func:`data_mesh`,
:func:`replicate`, :func:`put_batch`). docs/training.md says more.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm


def release_freed_memory() -> bool:
    """Give memory that the process freed back to the operating system (glibc's
    ``malloc_trim``); returns whether it could. XLA's compiler frees its working memory
    after compiling, but the C allocator keeps the pages, so a training process would go on
    holding its compile-time peak; the epoch loop calls this once the first step (and so
    the compilation) is done and after each epoch (evaluation compiles too)."""
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):   # not glibc (macOS, musl): nothing to do
        return False
    trim(0)
    return True


class NonFiniteLossError(FloatingPointError):
    """The training loss, or the model's outputs on validation, became NaN or inf."""


def data_mesh(num_devices: int = 0, *, local: bool = False) -> Mesh:
    """A 1-D ``data`` mesh over the first ``num_devices`` devices (all when 0): every
    process's devices, or (``local``) this process's only."""
    devices = jax.local_devices() if local else jax.devices()
    n = len(devices) if num_devices <= 0 else num_devices
    if n > len(devices):
        raise ValueError(f"asked for {n} devices, only {len(devices)} available")
    return Mesh(np.asarray(devices[:n]), ("data",))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` (parameters, optimiser state) copied to every device of ``mesh``; in a
    multi-process run each process places its own (identical) copy on its devices."""
    sharding = NamedSharding(mesh, P())
    if not mesh.is_multi_process:
        return jax.device_put(tree, sharding)

    def one(x):
        x = x if isinstance(x, jax.Array) else jax.numpy.asarray(x)
        return jax.make_array_from_single_device_arrays(
            x.shape, sharding, [jax.device_put(x, d) for d in sharding.addressable_devices])
    return jax.tree.map(one, tree)


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> tuple[int, int]:
    """Join a multi-process JAX run; returns ``(process_index, process_count)``.

    Arguments default to ``$AHJAX_COORDINATOR`` (``host:port`` of process 0),
    ``$AHJAX_NUM_PROCESSES`` and ``$AHJAX_PROCESS_ID``; with one process (the default)
    nothing happens. On CPUs the cross-process collectives use gloo. After this,
    ``jax.devices()`` lists every process's devices, so :func:`data_mesh` spans them all.
    """
    import os
    coordinator = coordinator or os.environ.get("AHJAX_COORDINATOR") or None
    num_processes = int(num_processes or os.environ.get("AHJAX_NUM_PROCESSES") or 1)
    if process_id is None:
        process_id = int(os.environ.get("AHJAX_PROCESS_ID") or 0)
    if num_processes <= 1:
        return 0, 1
    if not coordinator:
        raise ValueError(f"{num_processes} processes need a coordinator address (host:port "
                         "of process 0): --coordinator or $AHJAX_COORDINATOR")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process id {process_id} outside 0..{num_processes - 1}")
    if jax.distributed.is_initialized():
        return jax.process_index(), jax.process_count()
    if (os.environ.get("JAX_PLATFORMS") or "cpu").split(",")[0] == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_processes,
                               process_id=process_id)
    return jax.process_index(), jax.process_count()


def is_main_process() -> bool:
    """True on process 0, the one that writes results, logs and reports."""
    return jax.process_index() == 0


def local_copy(tree: Any) -> Any:
    """``tree`` with every array that spans other processes' devices replaced by this
    process's copy (for replicated arrays: the whole value), so the host can read it."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x.addressable_data(0)
        return x
    return jax.tree.map(one, tree)


def put_batch(batch: Mapping[str, Any], mesh: Mesh, keys: Iterable[str] | None = None
              ) -> dict:
    """``batch``'s arrays (those in ``keys``, default all; nested too) as global arrays split
    over ``mesh``'s ``data`` axis. With several processes each passes only its own rows, which
    must divide evenly over its devices; the global batch is their concatenation (docs/training.md).
    """
    sharding = NamedSharding(mesh, P("data"))
    n_local = len(sharding.addressable_devices)
    spans_processes = mesh.is_multi_process
    out = {}
    for k in (batch if keys is None else keys):
        x = batch[k]
        if isinstance(x, Mapping):
            out[k] = put_batch(x, mesh)
            continue
        if np.shape(x)[0] % n_local:
            raise ValueError(f"batch {k!r}: {np.shape(x)[0]} rows are not divisible by the "
                             f"{n_local} devices of the mesh")
        out[k] = (jax.make_array_from_process_local_data(sharding, np.asarray(x))
                  if spans_processes else jax.device_put(x, sharding))
    return out


@dataclasses.dataclass
class EpochResult:
    """What :func:`run_epochs` returns."""
    history: list[dict]          # one record per epoch run: epoch, loss, score (if any), ...
    best_epoch: int | None       # by score (later on ties), else the last; None if none ran
    diverged: str | None = None  # why training stopped early on NaN/inf (policy "stop")


def best_epoch(history: list[dict], key: str = "score") -> int | None:
    """The epoch with the highest finite ``key`` (the later one on a tie), or the last
    epoch when no record has one; None for an empty history."""
    scored = [r for r in history if r.get(key) is not None and math.isfinite(r[key])]
    if scored:
        top = max(r[key] for r in scored)
        return [r for r in scored if r[key] == top][-1]["epoch"]
    return history[-1]["epoch"] if history else None


def run_epochs(*, epochs: int, batches: Callable[[int], Iterable],
               step: Callable[[Any, int], Mapping[str, Any]],
               validate: Callable[[int], float] | None = None,
               end_epoch: Callable[[dict], None] | None = None,
               start_epoch: int = 0, history: list[dict] | None = None,
               on_nonfinite: str = "raise", desc: str = "training", progress: bool = False,
               flush_every: int = 16) -> EpochResult:
    """Run epochs ``start_epoch..epochs-1`` of ``step(batch, epoch)`` (metrics with ``"loss"``).

    After each epoch ``validate(epoch)`` gives a score (higher is better, NaN: none) and
    ``end_epoch(record)`` sees the record appended to ``history`` (extended in place, returned).
    Metrics fetching and the non-finite policy: docs/training.md, "The epoch loop".
    """
    if on_nonfinite not in ("raise", "stop"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'stop', got {on_nonfinite!r}")
    history = [] if history is None else history
    diverged = None
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        sums: dict[str, float] = {}
        count = 0
        pending: list = []

        def flush():
            nonlocal count
            for m in jax.device_get(pending):
                loss = float(m["loss"])
                if not math.isfinite(loss):
                    raise NonFiniteLossError(f"{desc}: loss is {loss} at epoch {epoch} "
                                             f"(step {count + 1} of the epoch)")
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + float(np.mean(v))
                count += 1
            pending.clear()

        bar = tqdm(desc=f"{desc} epoch {epoch + 1}/{epochs}", disable=not progress,
                   leave=False)
        try:
            for batch in batches(epoch):
                pending.append(step(batch, epoch))
                bar.update(1)
                if epoch == start_epoch and count == 0 and len(pending) == 1:
                    flush()                   # the first step compiled: hand back the
                    release_freed_memory()    # compiler's memory before training on
                if len(pending) >= flush_every:
                    flush()
                    bar.set_postfix(loss=f"{sums['loss'] / count:.4f}")
            flush()
            if count == 0:
                raise ValueError(f"{desc}: epoch {epoch} had no batch")
            record = {"epoch": epoch, **{k: v / count for k, v in sums.items()}}
            if validate is not None:
                score = float(validate(epoch))
                if math.isinf(score):
                    raise NonFiniteLossError(f"{desc}: validation score {score} after "
                                             f"epoch {epoch}")
                record["score"] = score
        except NonFiniteLossError as err:
            if on_nonfinite == "raise":
                raise
            diverged = str(err)
            break
        finally:
            bar.close()
        record["seconds"] = time.time() - t0
        release_freed_memory()
        history.append(record)
        if end_epoch is not None:
            end_epoch(record)
    return EpochResult(history, best_epoch(history), diverged)


__all__ = ["EpochResult", "NonFiniteLossError", "best_epoch", "data_mesh",
           "initialize_distributed", "is_main_process", "local_copy", "put_batch",
           "release_freed_memory", "replicate", "run_epochs"]
