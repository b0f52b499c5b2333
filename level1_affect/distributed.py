"""Level-1 extraction on Ray: videos spread over actors that each load the models once.

``level1_affect.dataset.extract_dataset(root, out, workers=N)`` (and ``python -m ahjax
extract --workers N``) lands here. Each actor builds one ``Extractor`` and takes videos
from a shared queue, running the sequential path's ``extract_record`` and writing into the
feature store itself, so stored videos are skipped, a failing one never stops the rest and
the arrays are the same. Ray is optional (``pip install -e ".[distributed]"``); a local
Ray is started without an ``address``, else the actors join that cluster (the store must
then be on a file system every node writes). docs/distributed.md has the details.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Iterator, Sequence

from tqdm.auto import tqdm

from ahjax.core.assets import enable_compilation_cache
from ahjax.core.data.store import FeatureStore
from level1_affect.extract import ExtractConfig, Extractor, extract_record


def require_ray():
    """The ``ray`` module, or an ImportError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError("extraction with more than one worker runs on Ray, which is not "
                          "installed: pip install -e \".[distributed]\" (or run with "
                          "--workers 1)") from None
    return ray


class ExtractWorker:
    """One Ray actor: an :class:`Extractor` built once, then one video per call."""

    def __init__(self, config: ExtractConfig, out: str, root: str):
        # Compiled encoders come from the shared persistent cache instead of being
        # compiled again in every actor ($AHJAX_JAX_CACHE=0 turns it off, as elsewhere).
        enable_compilation_cache()
        self.extractor = Extractor(config)
        self.store = FeatureStore(out)
        self.config, self.root = config, root

    def extract(self, record) -> dict:
        return extract_record(self.extractor, record, self.store, self.config, self.root)


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail within ``timeout`` seconds, naming ``address``, when a ``host:port`` (or
    ``ray://host:port``) Ray address does not answer; ``"auto"`` and ``"local"`` are left
    to Ray, which answers those at once."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray-address {address!r}: expected host:port, ray://host:port "
                         "or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConnectionError(f"cannot reach the Ray cluster at {address} within "
                              f"{timeout:g} s: {err}") from None


def extract_on_ray(records: Sequence, out: str | Path, config: ExtractConfig,
                   root: str | Path, *, workers: int, address: str | None = None,
                   progress: bool = True, desc: str = "extracting level 1",
                   worker: type = ExtractWorker) -> Iterator[dict]:
    """Yield :func:`extract_record`'s result for every record as the actors finish them,
    with a progress bar. An actor that dies mid-video loses only that video (reported
    failed, a new actor takes its place; docs/distributed.md). ``worker``: the actor
    class (tests pass one that dies)."""
    ray = require_ray()
    if not records:
        return
    started = not ray.is_initialized()
    if started:
        if address:
            check_address(address)
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        actor_cls = ray.remote(num_cpus=1, max_restarts=0)(worker)
        new_actor = lambda: actor_cls.remote(config, str(out), str(root))  # noqa: E731
        actors = [new_actor() for _ in range(max(1, min(workers, len(records))))]
        queue = list(records)
        pending: dict = {}

        def submit(i: int) -> None:
            if queue:
                rec = queue.pop(0)
                pending[actors[i].extract.remote(rec)] = (i, rec)

        for i in range(len(actors)):
            submit(i)
        bar = tqdm(total=len(records), desc=f"{desc} ({workers} Ray workers)", unit="video",
                   disable=not progress)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            i, rec = pending.pop(ref)
            try:
                res = ray.get(ref)
            except ray.exceptions.RayActorError as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                res = {"video_id": rec.video_id, "status": "failed", "traceback": str(err),
                       "error": f"WorkerDied: the Ray worker extracting it died ({first[:200]})"}
                actors[i] = new_actor()
            bar.update(1)
            bar.set_postfix_str(Path(res["video_id"]).name[-40:])
            yield res
            submit(i)
        bar.close()
    finally:
        if started:
            ray.shutdown()


__all__ = ["ExtractWorker", "check_address", "extract_on_ray", "require_ray"]
