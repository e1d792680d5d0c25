"""restorekit: a plugin-based image-restoration framework."""

__version__ = "0.1.0"
