"""Evaluation metrics: FID / KID on Inception features (``fid``), the Inception Score (``isc``)."""

from ddpm.metrics.fid import (
    FeatureStats,
    InceptionFeatures,
    SmallSampleWarning,
    compute_stats,
    fid_from_images,
    fid_from_stats,
    frechet_distance,
    is_stats_file,
    kid,
    load_images,
    reference_stats,
)
from ddpm.metrics.isc import (
    InceptionClassifier,
    InceptionWeightsError,
    inception_score,
    inception_score_from_logits,
)

__all__ = [
    "FeatureStats",
    "InceptionClassifier",
    "InceptionFeatures",
    "InceptionWeightsError",
    "SmallSampleWarning",
    "compute_stats",
    "fid_from_images",
    "fid_from_stats",
    "frechet_distance",
    "inception_score",
    "inception_score_from_logits",
    "is_stats_file",
    "kid",
    "load_images",
    "reference_stats",
]
