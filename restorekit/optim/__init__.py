"""Optimisation helpers shared by methods (latent search in a generator's W+)."""

from .latent import (
    GaussianFit, LatentAdam, Schedule, SphericalOptimizer, downscale_mse, fit_gaussian, geocross, lr_factor,
    project_to_sphere, sphere_radius,
)

__all__ = ["GaussianFit", "LatentAdam", "Schedule", "SphericalOptimizer", "downscale_mse", "fit_gaussian", "geocross",
           "lr_factor", "project_to_sphere", "sphere_radius"]
