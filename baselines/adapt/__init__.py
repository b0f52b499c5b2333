"""Domain adaptation for personalisation: the methods of the BAH paper's Table 5.

Every method works on the same network, :class:`AdaptNet` (a backbone that maps one frame,
optionally with its causal context, to a feature vector ending in BatchNorm, then a linear
classifier to 2 logits), and starts from the same source-trained weights. Any other network
with the same interface works too (``baselines.adapt.two_level.TwoLevelAdaptNet``, the two-level
model, does): ``model(inputs, train=...) -> (logits (B, 2), {"features": (B, f)})``, a
``classifier`` with ``kernel`` (f, 2) and ``bias`` (2,) such that ``logits = features @ kernel
+ bias`` (T3A reads it), and optionally ``param_groups``, a dict naming which parameters a
method trains where the defaults do not fit the network: ``"backbone"`` (SHOT: everything
but the classifier; default :data:`BACKBONE_PARAMS`) and ``"norm"`` (Tent; default
:data:`NORM_PARAMS`, the BatchNorm scales and biases). A method is a small frozen dataclass
with two entry points:

- ``adapt(model, source, target, val, key) -> model`` before testing (UDA, SFDA, Oracle);
  ``target`` is the target's adapt part, *unlabelled* except for the Oracle.
- ``predict(model, test, key) -> logits (n, 2)``; test-time methods adapt here, online,
  batch by batch over the test stream, and score each batch as they see it.

Methods (``METHODS``, name -> class; ``build_method(name, cfg)``):

- ``source_only``: the source model as it is.
- ``mmd`` (UDA): source CE + lambda * multi-kernel Gaussian MMD between source and target
  features (5 kernels, multiplier 2, bandwidth from the mean pairwise squared distance).
- ``acpl`` (UDA): progressive pseudo-labels from two augmented views of each target frame,
  kept when their averaged confidence passes a threshold (0.90, minus 0.02 each round),
  source CE + target CE on kept pseudo-labels + lambda * MMD. The public implementation
  detaches the MMD term, which silently turns it off; here its gradient flows.
- ``shot`` (SFDA): classifier frozen; information maximisation (mean entropy minus the
  entropy of the mean prediction) + 0.3 x CE on centroid pseudo-labels (cosine distance,
  two rounds of reassignment), refreshed every ``shot_refresh`` epochs.
- ``nrc`` (SFDA): feature and score memory banks over the target; K=5 nearest neighbours
  weighted 1 when reciprocal and 0.1 otherwise, KK=5 expanded neighbours at 0.1, plus
  a diversity term.
- ``oracle``: fine-tuned on the target's labelled adapt part (upper bound).
- ``tent`` (TTA): entropy minimisation on the BatchNorm scale/bias with batch statistics
  (on a network without BatchNorm, on its ``"norm"`` parameter group).
- ``t3a`` (TTA): classifier replaced by prototypes from the lowest-entropy test features
  seen so far (Iwasawa & Matsuo 2021); no text encoder needed.

Not included: the CLIP-based test-time methods of the paper (TPT, TDA, DPE, PromptAlign,
ReTA, T3AL, TTA-CaP, CLIP-AUTT). They need CLIP image and text weights, which are not
available offline here. :class:`VisionLanguageEncoder` is the protocol such weights must
satisfy and :class:`VisionLanguageTTA` the base class one of them would subclass.

Model selection for training-based methods follows the paper's rule (docs/bah_format.md): the
epoch with the best AP on the target's validation part (``select="last"`` turns it off).
Training runs through the project's one engine (:mod:`ahjax.core.train.engine`): the trainer's
optimiser builder, its non-finite and best-epoch policy, and its data-parallel mesh.

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
