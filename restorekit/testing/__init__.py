"""Test kit for plugin authors: a conformance suite, parametrized cases and pytest fixtures.

In a plugin's tests::

    import pytest
    from restorekit.testing import conformance_cases

    @pytest.mark.parametrize("case", conformance_cases(plugin="myplugin"))
    def test_conformance(case):
        case.run()

or one component at a time (``check_method(MyMethod, options={...})``); ``error_line(stderr)``
asserts that a refused command said so in one line. The fixtures
(``rk_batch``, ``rk_odd_batch``, ``rk_smooth_batch``, ``rk_face``, ``rk_home``, ``rk_registry``,
``rk_cli``) are a pytest plugin (the ``pytest11`` entry point ``restorekit``), so they are
available in any project that has restorekit installed.
"""

from .cases import (CaseResult, ConformanceCase, check_commands, collect_cases, conformance_cases,
                    run_conformance)
from .cli import error_line
from .conformance import (ConformanceError, check_degradation, check_encoder, check_face_detector,
                          check_face_embedder, check_generator, check_loss, check_method, check_method_info,
                          check_metric, check_weight_spec, example_params)

__all__ = [
    "CaseResult", "ConformanceCase", "ConformanceError", "check_commands", "check_degradation", "check_encoder",
    "check_face_detector", "check_face_embedder", "check_generator", "check_loss", "check_method",
    "check_method_info", "check_metric", "check_weight_spec", "collect_cases", "conformance_cases",
    "error_line", "example_params", "run_conformance",
]
