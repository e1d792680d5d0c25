"""Test kit for plugin authors: fixtures (a pytest plugin) and a conformance suite.

In a plugin's tests::

    from restorekit.testing import check_method
    def test_conformance():
        check_method(MyMethod)
"""

from .conformance import ConformanceError, check_method, check_metric

__all__ = ["ConformanceError", "check_method", "check_metric"]
