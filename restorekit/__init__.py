"""restorekit: a plugin-based image-restoration framework."""

__version__ = "0.1.0"

#: The ``importlib.metadata`` entry-point group plugins register under.
ENTRY_POINT_GROUP = "restorekit"
