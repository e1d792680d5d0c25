"""pSp face super-resolution for restorekit."""

__version__ = "0.1.0"
