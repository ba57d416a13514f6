"""A small, fast image classifier for judging generated samples (confidence and class distribution).

The investigation it serves: classify generated images with a classifier trained on the real data, then read
off the mean max-softmax confidence (recognisable images score high), the histogram of predicted classes
(a model that drops classes shows a skewed histogram: low entropy, high KL to uniform), and — for a
class-conditional model — how often the predicted class is the requested one (:func:`agreement`).

The package, one concept per module (every public name is re-exported here):

- ``network``: :class:`ClassifierConfig`, the architectures :data:`PRESETS` (``"mnist"``, ``"cifar10"``) and
  :class:`Classifier` (patch-whitening stem, conv blocks, global max-pool; runs at any size ≥ 9);
- ``training``: :class:`TrainSettings` / :data:`TRAIN_PRESETS`, augmentation, the one-cycle schedule,
  :func:`fit_temperature` and :func:`train_classifier`;
- ``prediction``: :func:`predict_logits` (uint8 images in, logits out), :func:`evaluate_accuracy`,
  :func:`agreement`;
- ``report``: :func:`histogram_stats`, :func:`sample_report`, :func:`noise_baseline`;
- ``files``: :func:`save_classifier` / :func:`load_classifier` (``model.safetensors`` + ``classifier.json``),
  :func:`default_classifier_dir` (``$DDPM_CACHE/classifiers/<dataset>/`` or
  ``~/.cache/ddpm/classifiers/<dataset>/``) and :func:`load_default_classifier`;
- ``errors``: :class:`ClassifierError` (a ``ValueError``) and its kinds;
- ``cli``: the command line, :func:`ddpm.metrics.classifier.cli.main`.

Reading the numbers: ``temperature`` is fitted on held-out real images, so there the mean confidence
tracks accuracy (it is stored as ``val_mean_confidence`` next to the accuracy: the reference a good
generator should approach). Like most ReLU-family CNNs, these classifiers are *over*-confident far from
the data — uniform pixel noise is typically put into a single class with high confidence
(:func:`noise_baseline`, stored as ``noise_mean_confidence``) — so judge poor samples by the class
histogram (entropy, KL to uniform) as much as by mean confidence.

Train the default classifiers once (MNIST falls back to a seeded 8k/2k split of the 10k test digits where
the 60k train split is absent)::

    python -m ddpm.metrics.classifier train --dataset mnist --max-minutes 3
    python -m ddpm.metrics.classifier train --dataset cifar10 --data-root cifar10-jpeg.zip --max-minutes 10
    python -m ddpm.metrics.classifier report --dataset cifar10 --images samples.npz
"""

from .cli import _main as _main  # ddpm.cli calls this name; the public one is cli.main
from .errors import ClassifierDivergedError, ClassifierError, ClassifierNotFoundError
from .files import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    default_classifier_dir,
    load_classifier,
    load_default_classifier,
    save_classifier,
)
from .files import FORMAT as FORMAT
from .files import FORMAT_VERSION as FORMAT_VERSION
from .network import PRESETS, Classifier, ClassifierConfig
from .prediction import agreement, evaluate_accuracy, predict_logits
from .report import CONFIDENT as CONFIDENT
from .report import histogram_stats, noise_baseline, sample_report
from .training import AUGMENTATIONS as AUGMENTATIONS
from .training import TRAIN_PRESETS, TrainSettings, fit_temperature, train_classifier
from .training import _random_affine as _random_affine  # tested directly
from .training import _random_translate as _random_translate  # tested directly

__all__ = [
    "CONFIG_FILE",
    "PRESETS",
    "TRAIN_PRESETS",
    "WEIGHTS_FILE",
    "Classifier",
    "ClassifierConfig",
    "ClassifierDivergedError",
    "ClassifierError",
    "ClassifierNotFoundError",
    "TrainSettings",
    "agreement",
    "default_classifier_dir",
    "evaluate_accuracy",
    "fit_temperature",
    "histogram_stats",
    "load_classifier",
    "load_default_classifier",
    "noise_baseline",
    "predict_logits",
    "sample_report",
    "save_classifier",
    "train_classifier",
]
