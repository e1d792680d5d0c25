"""Pretrained networks restorekit builds from offline sources (LPIPS, …).

Submodules import their heavy dependencies (``lpips``, ``torchvision``) only when a network is
built, so importing this package is cheap.
"""
