"""Evaluation metrics: FID / KID on Inception features (``fid``)."""

from ddpm.metrics.fid import (
    FeatureStats,
    InceptionFeatures,
    SmallSampleWarning,
    compute_stats,
    fid_from_images,
    fid_from_stats,
    frechet_distance,
    inception_score,
    is_stats_file,
    kid,
    load_images,
    reference_stats,
)

__all__ = [
    "FeatureStats",
    "InceptionFeatures",
    "SmallSampleWarning",
    "compute_stats",
    "fid_from_images",
    "fid_from_stats",
    "frechet_distance",
    "inception_score",
    "is_stats_file",
    "kid",
    "load_images",
    "reference_stats",
]
