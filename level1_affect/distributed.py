"""Level-1 extraction on Ray: videos spread over actors that each load the models once.

``extract_dataset(root, out, workers=N)`` (and ``python -m ahjax.extract --workers N``)
lands here. Each of the ``N`` actors builds one :class:`~level1_affect.extract.Extractor`
(face landmarker, expression model, Whisper, MiniLM, talk-type model) when it starts and
then takes videos from a shared queue (``ray.util.ActorPool``), running exactly the
per-video function of the sequential path (:func:`~level1_affect.extract.extract_record`)
and writing into the feature store itself, atomically per video. So a run on Ray keeps
what the sequential one does: videos already stored are skipped (a killed run resumes),
a failing video is reported and never stops the rest, and the arrays are the same.

Ray is an optional dependency (``pip install -e ".[distributed]"``). Without an address a
local Ray is started with ``N`` CPUs and shut down at the end; with ``address`` (for
example ``"auto"`` or ``"ray://head:10001"``) the actors join that cluster, and the store
path must then be one every node can write (a network file system), with this package
installed on the nodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

from tqdm.auto import tqdm

from ahjax.data.store import FeatureStore
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
        self.extractor = Extractor(config)
        self.store = FeatureStore(out)
        self.config, self.root = config, root

    def extract(self, record) -> dict:
        return extract_record(self.extractor, record, self.store, self.config, self.root)


def extract_on_ray(records: Sequence, out: str | Path, config: ExtractConfig,
                   root: str | Path, *, workers: int, address: str | None = None,
                   progress: bool = True, desc: str = "extracting level 1"
                   ) -> Iterator[dict]:
    """Yield :func:`extract_record`'s result for every record, as the actors finish them
    (in completion order), with a progress bar over videos."""
    ray = require_ray()
    if not records:
        return
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        from ray.util import ActorPool
        actor = ray.remote(num_cpus=1)(ExtractWorker)
        pool = ActorPool([actor.remote(config, str(out), str(root))
                          for _ in range(max(1, min(workers, len(records))))])
        bar = tqdm(total=len(records), desc=f"{desc} ({workers} Ray workers)", unit="video",
                   disable=not progress)
        for res in pool.map_unordered(lambda a, rec: a.extract.remote(rec), list(records)):
            bar.update(1)
            bar.set_postfix_str(Path(res["video_id"]).name[-40:])
            yield res
        bar.close()
    finally:
        if started:
            ray.shutdown()


__all__ = ["ExtractWorker", "extract_on_ray", "require_ray"]
