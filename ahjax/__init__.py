"""ahjax: ambivalence/hesitancy (A/H) recognition in videos, in JAX.

The front door::

    import ahjax
    model = ahjax.load("runs/two_level-...")    # a two_level run folder
    result = model.predict("answer.mp4")        # tracks, A/H, segments, contributions
    result.figure("answer.png")

``ahjax.extract(video)`` runs level 1 alone; ``ahjax.stream(source, run)`` yields A/H
chunk by chunk while a video plays or a camera films. Command lines: ``python -m ahjax``.
The core (``ahjax.core``: data, training, metrics, assets) imports nothing above it.
"""

__version__ = "0.1.0"
__all__ = ["load", "extract", "stream", "Result", "Model", "__version__"]


def __getattr__(name: str):
    # PEP 562: the front door imports every layer, so it loads on first use and
    # ``import ahjax.core`` pulls in nothing above the core.
    if name in ("load", "extract", "Result", "Model"):
        from ahjax import api  # PEP 562: loaded on first use
        return getattr(api, name)
    if name == "stream":
        from ahjax.streaming import stream  # PEP 562: loaded on first use
        return stream
    raise AttributeError(f"module 'ahjax' has no attribute {name!r}")
