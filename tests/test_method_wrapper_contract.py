"""What the Method base class guarantees for every subclass's restore, whatever the subclass does:
a bad ``seed`` or ``n_samples`` is a one-line ValueError before it runs (n_samples=0 returned an
empty batch, -1 a raw torch error with a signature dump), and the result holds no autograd graph
(a subclass without ``torch.no_grad()`` handed back an output that required grad)."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from restorekit.interfaces import Method, MethodInfo, Options
from restorekit.testing.conformance import check_method


class Plain(Method):
    """Nearest upscaling that checks its input and scale but neither its sampling nor runs under
    no_grad, as a first plugin is often written."""

    info: ClassVar[MethodInfo] = MethodInfo(name="plain_nearest", summary="nearest, unchecked", license="MIT",
                                            deterministic=True, scales=None, input_kind="any")
    Options = Options
    calls: ClassVar[list[object]] = []

    def load(self) -> None:
        pass

    def restore(self, lr, scale, *, seed=None, n_samples=1):  # type: ignore[no-untyped-def]
        Plain.calls.append(n_samples)
        self.check_input(lr)
        self.check_scale(scale)
        out = F.interpolate(lr.float() * 1.0, scale_factor=int(scale), mode="nearest")
        return out.clamp(0, 1).repeat_interleave(n_samples, 0)


@pytest.mark.parametrize("bad", [0, -1, 2.5, "2", True])
def test_bad_n_samples_is_refused_before_restore_runs(bad: object) -> None:
    Plain.calls.clear()
    with pytest.raises(ValueError, match=r"^plain_nearest: n_samples must be a positive integer, got "):
        Plain(Options()).restore(torch.rand(1, 3, 4, 4), 2, n_samples=bad)  # type: ignore[arg-type]
    assert Plain.calls == []


def test_bad_seed_is_refused_and_good_ones_pass() -> None:
    m = Plain(Options())
    for bad in (-1, 2**64, "7", 1.5):
        with pytest.raises(ValueError, match="seed must be None or an integer from 0 to 2\\*\\*64 - 1"):
            m.restore(torch.rand(1, 3, 4, 4), 2, seed=bad)  # type: ignore[arg-type]
    assert m.restore(torch.rand(1, 3, 4, 4), 2, seed=2**64 - 1, n_samples=2).shape == (2, 3, 8, 8)


def test_the_result_holds_no_graph() -> None:
    x = torch.rand(1, 3, 4, 4, requires_grad=True)
    out = Plain(Options()).restore(x, 2)
    assert not out.requires_grad and out.grad_fn is None
    torch.testing.assert_close(out, F.interpolate(x.detach(), scale_factor=2, mode="nearest"))


def test_such_a_method_now_passes_the_conformance_checks() -> None:
    check_method(Plain)  # n_samples and graph checks included
