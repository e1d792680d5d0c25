"""An offline realism figure for generators (FID's Inception weights cannot be had offline).

Fréchet distances between generated samples (or any image set) and reference images in the
feature spaces of offline networks — ``alex_conv5`` (LPIPS AlexNet), ``vgg_conv5`` (LPIPS VGG16),
``dlib128`` (dlib's face descriptor on a fixed FFHQ-framing chip) — plus the share of samples
in which a registered face detector finds a face. These are NOT FID and not comparable with
published FIDs: compare them only with each other, at the same sample count, reference set and
sampling seed.

- :mod:`.frechet`: the distance (float64, eigen-decomposition square roots) and running statistics.
- :mod:`.spaces`: the feature spaces (batched, CPU or CUDA, the [0, 1] image convention).
- :mod:`.evaluate`: sampling a generator by seed, reference statistics with a cache, the report.
"""

from .evaluate import (NOT_FID_NOTE, FaceShare, RealismReport, SpaceFigure, default_cache_dir,
                       evaluate_generator, evaluate_images, face_share, feature_statistics,
                       generator_batches, generator_latents, image_batches, load_statistics,
                       file_digests, generator_provenance, multi_statistics, reference_key, reference_statistics,
                       save_statistics)
from .frechet import FeatureStats, StatsAccumulator, frechet_distance, psd_sqrt, stats_of
from .spaces import (DEFAULT_SPACES, SPACE_ALIASES, SPACE_SUMMARIES, DlibDescriptorSpace, FeatureSpace,
                     LpipsBackboneSpace, build_space, canonical_space)

__all__ = [
    "NOT_FID_NOTE", "FaceShare", "RealismReport", "SpaceFigure", "default_cache_dir", "evaluate_generator",
    "evaluate_images", "face_share", "feature_statistics", "generator_batches", "generator_latents",
    "file_digests", "generator_provenance", "image_batches", "load_statistics", "multi_statistics", "reference_key", "reference_statistics",
    "save_statistics", "FeatureStats", "StatsAccumulator", "frechet_distance", "psd_sqrt", "stats_of",
    "DEFAULT_SPACES", "SPACE_ALIASES", "SPACE_SUMMARIES", "DlibDescriptorSpace", "FeatureSpace",
    "LpipsBackboneSpace", "build_space", "canonical_space",
]
