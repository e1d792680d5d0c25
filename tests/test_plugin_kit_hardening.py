"""The conformance checks added after the kit audit: global state left changed, stochastic methods
that ignore the seed or the batch, input layouts and dtypes, constant images, every declared scale,
required options, and spec() at non-default values. Each faulty component is built inline; its
fault-free version passes."""

from __future__ import annotations

import random
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import Field

from restorekit.interfaces import Degradation, Loss, Method, MethodInfo, Metric, Options
from restorekit.testing import (ConformanceError, check_degradation, check_loss, check_method, check_metric,
                                run_conformance)


class NoOpts(Options):
    pass


class Near(Method):
    """Correct: nearest-neighbour, converts its input to float32."""

    info: ClassVar[MethodInfo] = MethodInfo(name="near_hk", summary="nearest")
    Options = NoOpts

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        self.check_input(lr)
        self.check_scale(scale)
        out = F.interpolate(lr.float(), scale_factor=int(scale), mode="nearest")
        return out.clamp(0, 1).repeat_interleave(n_samples, 0)


class Noisy(Near):
    """Correct stochastic method: its noise comes from a local generator seeded by `seed`."""

    info: ClassVar[MethodInfo] = MethodInfo(name="noisy_hk", summary="noisy", deterministic=False)

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        out = super().restore(lr, scale, n_samples=n_samples)
        g = torch.Generator().manual_seed(0 if seed is None else seed)
        return (out + 0.02 * torch.rand(out.shape, generator=g)).clamp(0, 1)


def leaking(base, action, label):
    class Leak(base):
        def restore(self, lr, scale, *, seed=None, n_samples=1):
            action()
            return super().restore(lr, scale, seed=seed, n_samples=n_samples)
    Leak.__name__ = label
    return Leak


def other_value(get, set_, other):
    """A leak that sets a value other than the one found at its first call, the same every call.

    The value is chosen when the check runs, not at import: other test modules change these
    settings when they are imported (test_dlib_port sets one thread), so a value chosen at import
    may be the current one by the time the check runs, and then the "leak" changes nothing."""
    chosen = []

    def action():
        if not chosen:
            chosen.append(other(get()))
        set_(chosen[0])
    return action


def other_threads():
    return other_value(torch.get_num_threads, torch.set_num_threads, lambda n: 1 if n != 1 else 2)


def flag_flip(obj, attr):
    return other_value(lambda: getattr(obj, attr), lambda v: setattr(obj, attr, v), lambda v: not v)


# (id, a factory of the leaking action, what the message says)
LEAKS = [
    ("threads", other_threads, r"torch.get_num_threads\(\) \d+ → \d+"),
    ("grad", lambda: lambda: torch.set_grad_enabled(False), r"torch.is_grad_enabled\(\) True → False"),
    ("dtype", lambda: lambda: torch.set_default_dtype(torch.float64),
     r"torch.get_default_dtype\(\) float32 → float64"),
    ("benchmark", lambda: flag_flip(torch.backends.cudnn, "benchmark"), r"torch.backends.cudnn.benchmark"),
    ("cudnn_det", lambda: flag_flip(torch.backends.cudnn, "deterministic"), r"torch.backends.cudnn.deterministic"),
    ("det_algos", lambda: lambda: torch.use_deterministic_algorithms(True),
     r"torch.are_deterministic_algorithms_enabled\(\) False → True"),
    ("matmul_tf32", lambda: other_value(torch.get_float32_matmul_precision, torch.set_float32_matmul_precision,
                                        lambda v: "high" if v == "highest" else "highest"),
     r"(torch.backends.cuda.matmul.fp32_precision|torch.get_float32_matmul_precision\(\)) '\w+' → '\w+'"),
    ("cudnn_tf32", lambda: flag_flip(torch.backends.cudnn, "allow_tf32"),
     r"(torch.backends.cudnn.conv.fp32_precision '\w+' → '\w+'|"
     r"TF32 convolutions \(torch.backends.cudnn.allow_tf32\) (True → False|False → True))"),
    # (draws, not seeding: a seed(0) changes nothing where an earlier test left the RNG seeded with 0)
    ("torch_rng", lambda: lambda: torch.rand(1),
     r"the global torch RNG \(torch.get_rng_state\(\)\) was advanced"),
    ("numpy_rng", lambda: lambda: np.random.random(), r"numpy's global RNG"),
    ("python_rng", lambda: lambda: random.random(), r"Python's global RNG"),
]


def _state():
    return (torch.get_num_threads(), torch.is_grad_enabled(), torch.get_default_dtype(),
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
            torch.are_deterministic_algorithms_enabled(), torch.get_rng_state().clone(),
            np.random.get_state()[1].copy(), random.getstate(), torch.get_float32_matmul_precision(),
            torch.backends.cudnn.allow_tf32)


def _same(a, b):
    return all(bool(torch.equal(x, y)) if isinstance(x, torch.Tensor) else
               bool(np.array_equal(x, y)) if isinstance(x, np.ndarray) else x == y for x, y in zip(a, b))


@pytest.mark.parametrize("what, make_action, message", LEAKS, ids=[x[0] for x in LEAKS])
def test_a_method_that_leaves_global_state_changed_fails_and_the_state_is_put_back(what, make_action, message):
    before = _state()
    with pytest.raises(ConformanceError, match=r"near_hk: restore\(\) left global state changed: " + message):
        check_method(leaking(Near, make_action(), what))
    assert _same(before, _state())


def test_one_time_work_in_load_is_not_a_leak_and_correct_methods_leave_state_alone():
    class LoadsOnce(Near):
        def load(self):
            torch.manual_seed(1234)  # e.g. building a model with torch.nn init: before the checked calls

    check_method(LoadsOnce)
    before = _state()
    check_method(Noisy)
    assert _same(before, _state())


class PSNRish(Metric):
    name: ClassVar[str] = "psnrish_hk"
    higher_is_better: ClassVar[bool] = False

    def __call__(self, pred, target, *, lr, scale):
        return (pred - target).abs().flatten(1).mean(1).double()


class PSNRReseeds(PSNRish):
    def __call__(self, pred, target, *, lr, scale):
        torch.manual_seed(0)
        return super().__call__(pred, target, lr=lr, scale=scale)


class Noise(Degradation):
    name: ClassVar[str] = "noise_hk"

    class Params(Options):
        sigma: float = Field(5.0, ge=0, le=50, description="noise sigma in 0-255 units")

    def __call__(self, hr, *, generator=None):
        n = torch.randn(hr.shape, generator=generator) * self.params.sigma / 255
        return (hr + n).clamp(0, 1)

    def spec(self):
        return f"{self.name}:{self.params.sigma:g}"


class NoiseReseeds(Noise):
    def __call__(self, hr, *, generator=None):
        torch.manual_seed(int(generator.initial_seed()))
        return super().__call__(hr, generator=generator)


class NoiseLossySpec(Noise):
    def spec(self):
        return f"{self.name}:{int(self.params.sigma)}"


class L1(Loss):
    name: ClassVar[str] = "l1_hk"

    def __call__(self, pred, target, **ctx):
        return (pred - target).abs().mean()


class L1NoGrad(L1):
    def __init__(self, weight=1.0):
        super().__init__(weight)
        self.leak = other_threads()

    def __call__(self, pred, target, **ctx):
        value = super().__call__(pred, target, **ctx)
        self.leak()
        return value


def test_metrics_degradations_and_losses_must_leave_global_state_alone():
    before = _state()
    check_metric(PSNRish)
    with pytest.raises(ConformanceError, match=r"psnrish_hk: __call__ left global state changed: the global torch RNG"):
        check_metric(PSNRReseeds)
    check_degradation(Noise)
    with pytest.raises(ConformanceError, match=r"noise_hk: __call__ left global state changed: the global torch RNG"):
        check_degradation(NoiseReseeds)
    check_loss(L1)
    with pytest.raises(ConformanceError, match=r"l1_hk: the first __call__ \(warm-up\) left global state changed: "
                                               r"torch.get_num_threads\(\)"):
        check_loss(L1NoGrad)
    assert _same(before, _state())


# -- stochastic methods --------------------------------------------------------------------------

class NoisyFirstOnly(Noisy):
    """Restores image 0 and hands its result to every image."""

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        one = super().restore(lr[:1], scale, seed=seed, n_samples=n_samples)
        return one.repeat(lr.shape[0], 1, 1, 1)


class NoisyIgnoresSeed(Noisy):
    """Declared stochastic, but a fixed generator: seeds 0 and 1 and the n_samples copies are equal."""

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        out = Near.restore(self, lr, scale)
        noise = 0.02 * torch.rand(out.shape[1:], generator=torch.Generator().manual_seed(7))
        return (out + noise).clamp(0, 1).repeat_interleave(n_samples, 0)


def test_stochastic_methods_must_restore_every_image_and_use_the_seed():
    check_method(Noisy)
    with pytest.raises(ConformanceError, match="noisy_hk: image 1's output equals image 0's though the inputs differ"):
        check_method(NoisyFirstOnly, samples_batch_independent=False)
    with pytest.raises(ConformanceError, match="declared deterministic=False but neither the seed .* nor n_samples=2 "
                                               "changes the output"):
        check_method(NoisyIgnoresSeed)


# -- input layouts and dtypes ----------------------------------------------------------------------

class RawMemory(Near):
    """Reads the input's storage as if it were contiguous float32 N×3×H×W."""

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        raw = torch.as_strided(lr, lr.shape, torch.empty(lr.shape).stride()).float()
        return super().restore(raw, scale, n_samples=n_samples)


class NeedsContiguous(Near):
    def restore(self, lr, scale, *, seed=None, n_samples=1):
        flat = lr.view(lr.shape[0], -1)  # raises on a transposed view
        return super().restore(flat.view(lr.shape), scale, n_samples=n_samples)


class KeepsDtype(Near):
    def restore(self, lr, scale, *, seed=None, n_samples=1):
        self.check_scale(scale)
        return F.interpolate(lr, scale_factor=int(scale), mode="nearest").clamp(0, 1).repeat_interleave(n_samples, 0)


@pytest.mark.parametrize("cls, message", [
    (RawMemory, r"near_hk: image 1 alone as a channels_last tensor gives another output than as a contiguous "
                r"float32 tensor \(max diff"),
    (NeedsContiguous,
     r"near_hk: restore raised on image 1 alone as a .* tensor \(seed 0\): RuntimeError: view size"),
    (KeepsDtype, r"near_hk: output must be float32, got torch.float64 for image 1 alone as a float64 tensor"),
])
def test_layouts_and_dtypes_give_the_same_float32_output(cls, message):
    with pytest.raises(ConformanceError, match=message):
        check_method(cls)


# -- degenerate images ---------------------------------------------------------------------------

class StretchesRange(Near):
    """Per-image min-max normalisation: 0/0 on a flat image."""

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        lr = lr.float()
        lo = lr.amin((1, 2, 3), keepdim=True)
        hi = lr.amax((1, 2, 3), keepdim=True)
        unit = super().restore((lr - lo) / (hi - lo), scale)
        return (unit * (hi - lo) + lo).repeat_interleave(n_samples, 0)


class LogDomain(Near):
    def restore(self, lr, scale, *, seed=None, n_samples=1):
        return super().restore(lr, scale, n_samples=n_samples).log().exp() * (lr.amin() > 0).float() + \
            super().restore(lr, scale, n_samples=n_samples).log() * (lr.amin() <= 0).float()


@pytest.mark.parametrize("cls", [StretchesRange, LogDomain])
def test_constant_images_give_finite_outputs(cls):
    with pytest.raises(ConformanceError, match=r"output has NaN/inf for a batch of constant images \(all 0, all 1, "
                                               r"all 0.5"):
        check_method(cls)


# -- every declared scale ------------------------------------------------------------------------

class NotFour(Near):
    info: ClassVar[MethodInfo] = MethodInfo(name="near_hk", summary="nearest", scales=(2, 3, 4))

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        if scale == 4:
            raise NotImplementedError("scale 4 later")
        return super().restore(lr, scale, n_samples=n_samples)


class NoScaleOne(Near):
    def restore(self, lr, scale, *, seed=None, n_samples=1):
        if scale == 1:
            raise RuntimeError("kernel size 0")
        return super().restore(lr, scale, n_samples=n_samples)


class ManyScales(Near):
    info: ClassVar[MethodInfo] = MethodInfo(name="near_hk", summary="nearest", scales=tuple(range(2, 12)))
    tried: ClassVar[list[int]] = []

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        if isinstance(scale, int) and scale >= 1:
            ManyScales.tried.append(scale)
        return super().restore(lr, scale, n_samples=n_samples)


def test_every_declared_scale_is_tried_within_a_cap():
    with pytest.raises(ConformanceError, match=r"restore raised on one image at scale 4: NotImplementedError"):
        check_method(NotFour)
    with pytest.raises(ConformanceError, match=r"restore raised on one image at scale 1: RuntimeError: kernel size 0"):
        check_method(NoScaleOne)
    ManyScales.tried.clear()
    check_method(ManyScales)
    others = sorted(set(ManyScales.tried) - {2, 12})
    assert others == [3, 6, 8, 11], others  # 4 of the 9 others, evenly chosen, the largest included


# -- required options ----------------------------------------------------------------------------

class NeedsAmount(Options):
    amount: float = Field(description="how much", ge=0)


class Required(Near):
    Options = NeedsAmount


def test_a_required_option_is_one_line_naming_the_field_and_how_to_give_it():
    with pytest.raises(ConformanceError) as err:
        check_method(Required)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("near_hk: Options field(s) 'amount' have no default (and no examples), so the check "
                          "needs a value: `restorekit plugin check PLUGIN --opt near_hk.amount=VALUE`"), msg
    assert "conformance_cases(configs={'near_hk': {'options': {'amount': ...}}})" in msg
    check_method(Required, options={"amount": 1.0})
    with pytest.raises(ConformanceError, match=r"near_hk: Options \{'amount': -1\} are not valid: 'amount': "
                                               r"Input should be greater than or equal to 0 \(got -1\)$"):
        check_method(Required, options={"amount": -1})


def test_run_conformance_reports_a_crash_on_one_line(monkeypatch):
    from restorekit.testing import cases

    class Boom:
        id = "method:boom"
        missing_weights = "skip"

        def check(self):
            raise ValueError("first line\nsecond line")

    monkeypatch.setattr(cases, "collect_cases", lambda plugin, **kw: [Boom()])
    [r] = run_conformance("whatever")
    assert r.status == "failed" and r.detail == "ValueError: first line | second line"


# -- spec() round trip at other values -----------------------------------------------------------

def test_spec_round_trips_at_non_default_values_too():
    check_degradation(Noise)
    with pytest.raises(ConformanceError, match=r"noise_hk: spec 'noise_hk:5' rebuilds params .*sigma=5\.0.*, not "
                                               r".*sigma=5\.25.* \(at the non-default sigma=5\.25\)"):
        check_degradation(NoiseLossySpec)
