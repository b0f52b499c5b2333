"""Domain adaptation for personalisation: the methods of the BAH paper's Table 5.

Every method adapts the same network (:class:`AdaptNet`, or any with its interface, such
as ``baselines.adapt.two_level.TwoLevelAdaptNet``) from the same source-trained weights.
A method is a small frozen dataclass: ``adapt(model, source, target, val, key) -> model``
before testing (UDA, SFDA, Oracle) and ``predict(model, test, key) -> logits (n, 2)``
(test-time methods adapt here, batch by batch). ``METHODS`` maps names to classes
(``build_method(name, cfg)``); each is described, with the network interface, in
docs/paper_setups.md, "Personalisation".

The package: :mod:`~baselines.adapt.config` (:class:`AdaptConfig`),
:mod:`~baselines.adapt.domains` (:class:`Domain`), :mod:`~baselines.adapt.networks` (the
network, full passes), :mod:`~baselines.adapt.losses` and :mod:`~baselines.adapt.methods`
(the methods, their training, test-time adaptation).
"""

from baselines.adapt.config import AdaptConfig
from baselines.adapt.domains import Domain, Inputs
from baselines.adapt.losses import cross_entropy, entropy, mmd
from baselines.adapt.methods import (ACPL, MASK_KEYS, METHODS, MMD, NRC, SHOT, T3A, Method,
                                     Oracle, SourceTraining, Tent, TestTimeMethod,
                                     TrainedMethod, VisionLanguageEncoder, VisionLanguageTTA,
                                     augment, build_method, centroid_labels, fit,
                                     make_tx, state_rows, train_source)
from baselines.adapt.networks import (BACKBONE_PARAMS, NORM_PARAMS, AdaptNet, MLPBackbone,
                                      TCNBackbone, make_net,
                                      predict_all)

__all__ = ["ACPL", "AdaptConfig", "AdaptNet", "BACKBONE_PARAMS", "Domain", "Inputs",
           "MASK_KEYS", "METHODS", "MLPBackbone", "MMD", "Method", "NORM_PARAMS", "NRC",
           "Oracle", "SHOT", "SourceTraining", "T3A", "TCNBackbone", "Tent",
           "TestTimeMethod", "TrainedMethod", "VisionLanguageEncoder", "VisionLanguageTTA",
           "augment", "build_method", "centroid_labels", "cross_entropy", "entropy", "fit",
           "make_net", "make_tx", "mmd", "predict_all", "state_rows", "train_source"]
