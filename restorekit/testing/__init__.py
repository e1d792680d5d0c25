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

from importlib import import_module
from typing import TYPE_CHECKING, Any

# Imported on first use (PEP 562): ``restorekit.testing.fixtures`` is a pytest plugin every pytest
# run loads, and importing this package must not import torch for it.
_WHERE = {
    **dict.fromkeys(["CaseResult", "ConformanceCase", "check_commands", "collect_cases", "conformance_cases",
                     "run_conformance"], "cases"),
    "error_line": "cli",
    **dict.fromkeys(["ConformanceError", "check_degradation", "check_encoder", "check_face_detector",
                     "check_face_embedder", "check_generator", "check_loss", "check_method", "check_method_info",
                     "check_metric", "check_weight_spec", "example_params"], "conformance"),
}

if TYPE_CHECKING:
    from .cases import (CaseResult, ConformanceCase, check_commands, collect_cases, conformance_cases,
                        run_conformance)
    from .cli import error_line
    from .conformance import (ConformanceError, check_degradation, check_encoder, check_face_detector,
                              check_face_embedder, check_generator, check_loss, check_method, check_method_info,
                              check_metric, check_weight_spec, example_params)


def __getattr__(name: str) -> Any:
    if name in ("cases", "cli", "conformance", "data", "distributed", "fixtures"):  # the submodules, as before
        return import_module(f".{name}", __name__)
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__all__ = [
    "CaseResult", "ConformanceCase", "ConformanceError", "check_commands", "check_degradation", "check_encoder",
    "check_face_detector", "check_face_embedder", "check_generator", "check_loss", "check_method",
    "check_method_info", "check_metric", "check_weight_spec", "collect_cases", "conformance_cases",
    "error_line", "example_params", "run_conformance",
]
