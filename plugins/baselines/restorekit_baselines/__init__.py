"""Baseline restoration methods for restorekit."""

__version__ = "0.1.0"
