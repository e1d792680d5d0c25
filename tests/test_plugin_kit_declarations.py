"""The conformance kit gives components what they declare and judges them by it: a loss gets the
context entries it declares (``context_inputs``), a metric that declares ``nan_label`` may give NaN
on synthetic images but must measure a face photo, one-time lazy initialisation on a first call is
not a global-state leak, TF32 settings are global state, required options take their examples, and
the messages give every fix. The built-in components pass their own plugin's checks."""

from __future__ import annotations

import math
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from pydantic import Field

from restorekit.interfaces import Loss, LossContext, Method, MethodInfo, Metric, Options
from restorekit.testing import ConformanceError, check_loss, check_method, check_metric, run_conformance
from restorekit.testing import conformance as conf


# -- losses: declared context ------------------------------------------------------------------

def test_w_norm_gets_the_latents_it_declares():
    from restorekit.losses import WNormLoss

    assert {d.name for d in WNormLoss.context_inputs} == {"latents", "latent_avg"}
    check_loss(WNormLoss)
    check_loss(WNormLoss, kwargs={"squared": True})


class ScaledL1(Loss):
    name: ClassVar[str] = "scaled_l1_ck"
    context_inputs: ClassVar[tuple[LossContext, ...]] = (LossContext("gain", (), description="per-image gain"),)

    def __call__(self, pred, target, **context):
        gain = context["gain"]
        assert gain.shape == (pred.shape[0],), gain.shape
        return ((pred - target).abs().flatten(1).mean(1) * (1 + gain.abs())).mean()


class UndeclaredContext(Loss):
    name: ClassVar[str] = "undeclared_ck"

    def __call__(self, pred, target, **context):
        return (pred - target).abs().mean() * context["gain"].mean()


class BadDeclaration(ScaledL1):
    context_inputs: ClassVar = (("gain", ()),)


def test_a_loss_gets_each_declared_context_entry_and_an_undeclared_one_is_named():
    check_loss(ScaledL1)
    check_loss(ScaledL1, context={"gain": torch.tensor([0.5, 1.0])})  # given entries are used as given
    with pytest.raises(ConformanceError, match=r"undeclared_ck: __call__ raised: KeyError: 'gain'; a loss that reads "
                                               r"context entries declares them: context_inputs"):
        check_loss(UndeclaredContext)
    with pytest.raises(ConformanceError, match=r"context_inputs must be a tuple of restorekit.interfaces.LossContext"):
        check_loss(BadDeclaration)


# -- metrics: declared NaN semantics ---------------------------------------------------------

class MeanAbs(Metric):
    name: ClassVar[str] = "meanabs_ck"
    higher_is_better: ClassVar[bool] = False

    def __call__(self, pred, target, *, lr, scale):
        return (pred - target).abs().flatten(1).mean(1).double()


class NaNOnSmall(MeanAbs):
    """Not measurable below 64 px (the synthetic images): NaN there."""

    nan_label: ClassVar[str] = "image too small"

    def __call__(self, pred, target, *, lr, scale):
        v = super().__call__(pred, target, lr=lr, scale=scale)
        return v if target.shape[-1] >= 64 else torch.full_like(v, math.nan)


class NaNUndeclared(NaNOnSmall):
    nan_label: ClassVar[str] = ""


class AlwaysNaN(NaNOnSmall):
    def __call__(self, pred, target, *, lr, scale):
        return torch.full((pred.shape[0],), math.nan, dtype=torch.float64)


def test_a_metric_may_give_nan_only_when_it_declares_what_nan_means():
    check_metric(NaNOnSmall, require_face=False)
    check_metric(NaNOnSmall, face_image=torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ConformanceError, match=r"meanabs_ck: NaN on ordinary images \(a metric whose NaN means "
                                               r"'not measurable here' declares what it means: nan_label"):
        check_metric(NaNUndeclared)
    check_metric(AlwaysNaN, require_face=False)
    with pytest.raises(ConformanceError, match=r"meanabs_ck: a perturbed prediction of a face photo \(64×64\) "
                                               r"scores \[nan\]: a metric whose NaN means 'image too small' must"):
        check_metric(AlwaysNaN, face_image=torch.rand(3, 64, 64))


def test_a_nan_metric_is_measured_on_the_default_face_photo():
    pytest.importorskip("skimage")
    with pytest.raises(ConformanceError, match=r"a perturbed prediction of a face photo \(256×256\) scores"):
        check_metric(AlwaysNaN)
    check_metric(NaNOnSmall)


# -- lazy initialisation is not a leak; drawing on every call is -------------------------------

class LazyNetLoss(Loss):
    """Builds an nn.Module (default init: draws from the global RNG) on first use, then sets its weights."""

    name: ClassVar[str] = "lazy_ck"

    def __init__(self, weight=1.0):
        super().__init__(weight)
        self.net = None

    def __call__(self, pred, target, **context):
        if self.net is None:
            self.net = torch.nn.Conv2d(3, 3, 1, bias=False)
            with torch.no_grad():
                self.net.weight.copy_(torch.eye(3)[:, :, None, None])
            self.net.requires_grad_(False)
        return (self.net(pred) - self.net(target)).abs().mean()


class DrawsEveryCall(LazyNetLoss):
    def __call__(self, pred, target, **context):
        torch.rand(1)
        return super().__call__(pred, target, **context)


class LazyMetric(MeanAbs):
    def __init__(self):
        self.built = False

    def __call__(self, pred, target, *, lr, scale):
        if not self.built:
            torch.nn.Linear(2, 2)
            self.built = True
        return super().__call__(pred, target, lr=lr, scale=scale)


class MetricDrawsEveryCall(MeanAbs):
    def __call__(self, pred, target, *, lr, scale):
        torch.rand(1)
        return super().__call__(pred, target, lr=lr, scale=scale)


def test_one_time_lazy_initialisation_passes_and_drawing_on_every_call_fails():
    before = torch.get_rng_state()
    check_loss(LazyNetLoss)
    check_metric(LazyMetric)
    assert torch.equal(before, torch.get_rng_state())  # the warm-up's draws are put back too
    with pytest.raises(ConformanceError, match=r"lazy_ck: __call__ \(and backward\) left global state changed: "
                                               r"the global torch RNG"):
        check_loss(DrawsEveryCall)
    with pytest.raises(ConformanceError, match=r"meanabs_ck: __call__ left global state changed: the global torch RNG"):
        check_metric(MetricDrawsEveryCall)
    assert torch.equal(before, torch.get_rng_state())


class SetsAtFirstUse(MeanAbs):
    """Changes a process-wide setting on its first call only (and never sets it back)."""

    def __init__(self):
        self.built = False

    def __call__(self, pred, target, *, lr, scale):
        if not self.built:
            torch.set_float32_matmul_precision("high" if torch.get_float32_matmul_precision() == "highest"
                                              else "highest")
            self.built = True
        return super().__call__(pred, target, lr=lr, scale=scale)


def test_a_setting_changed_at_the_warm_up_still_fails():
    """The warm-up forgives the first call's RNG draws only: a setting it changes stays changed in
    real use, so it fails (and is put back)."""
    before = torch.get_float32_matmul_precision()
    with pytest.raises(ConformanceError, match=r"meanabs_ck: the first __call__ \(warm-up\) left global state "
                                               r"changed: torch.get_float32_matmul_precision\(\)"):
        check_metric(SetsAtFirstUse)
    assert torch.get_float32_matmul_precision() == before


# -- messages ------------------------------------------------------------------------------------

class NoOpts(Options):
    pass


class Near(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="near_ck", summary="nearest")
    Options = NoOpts

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        self.check_input(lr)
        self.check_scale(scale)
        return F.interpolate(lr.float(), scale_factor=int(scale), mode="nearest").clamp(0, 1).repeat_interleave(
            n_samples, 0)


class LazyPerScale(Near):
    """Deterministic; builds a module the first time it sees a scale (draws from the global RNG)."""

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        torch.nn.Conv2d(3, 3, 1)
        return super().restore(lr, scale, seed=seed, n_samples=n_samples)


class ReseedsAndThreads(Near):
    def restore(self, lr, scale, *, seed=None, n_samples=1):
        torch.manual_seed(0)
        torch.set_grad_enabled(False)
        return super().restore(lr, scale, seed=seed, n_samples=n_samples)


def test_the_rng_message_names_module_building_and_save_and_restore():
    with pytest.raises(ConformanceError) as err:
        check_method(LazyPerScale)
    msg = str(err.value)
    assert "building an nn.Module draws from the global torch RNG" in msg, msg
    assert "torch.device('meta')" in msg and "torch.random.fork_rng(devices=[])" in msg, msg
    assert "np.random.get_state()/set_state()" in msg, msg
    with pytest.raises(ConformanceError) as err:
        check_method(ReseedsAndThreads)
    msg = str(err.value)
    assert "torch.is_grad_enabled() True → False" in msg and "the global torch RNG" in msg, msg
    assert "for the RNG, draw randomness from a local torch.Generator" in msg, msg
    assert "for the setting, set it back before returning" in msg, msg


class TwoRequired(Options):
    amount: float = Field(description="how much", ge=0)
    radius: int = Field(description="how far", ge=1)


class NeedsTwo(Near):
    Options = TwoRequired


class WithExamples(Options):
    amount: float = Field(description="how much", ge=0, examples=[0.5, 2.0])
    radius: int = Field(3, description="how far", ge=1)


class HasExamples(Near):
    Options = WithExamples


def test_the_required_option_hint_names_every_field_and_examples_are_used():
    with pytest.raises(ConformanceError) as err:
        check_method(NeedsTwo)
    msg = str(err.value)
    assert "\n" not in msg
    assert "'amount', 'radius'" in msg, msg
    assert "`restorekit plugin check --opt near_ck.amount=VALUE --opt near_ck.radius=VALUE`" in msg, msg
    assert "configs={'near_ck': {'options': {'amount': ..., 'radius': ...}}}" in msg, msg
    assert "check_method(options={'amount': ..., 'radius': ...})" in msg, msg
    method = check_method(HasExamples)
    assert method.options.amount == 0.5
    assert check_method(HasExamples, options={"amount": 2.0}).options.amount == 2.0


# -- cheaper: one image is not restored twice the same way ---------------------------------------

class Counting(Near):
    calls: ClassVar[list] = []

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        Counting.calls.append((tuple(lr.shape), lr.dtype, lr.is_contiguous(), scale, seed, n_samples))
        return super().restore(lr, scale, seed=seed, n_samples=n_samples)


def test_a_one_image_input_is_not_restored_again_for_the_layout_reference():
    Counting.calls.clear()
    lr = torch.rand(1, 3, 8, 6, generator=torch.Generator().manual_seed(0))
    check_method(Counting, lr=lr)
    first = ((1, 3, 8, 6), torch.float32, True, 2, 0, 1)
    assert Counting.calls.count(first) == 2, Counting.calls  # the first call and "same seed, same output"


# -- TF32 on CUDA: the layout comparison's tolerance -----------------------------------------------

def test_layout_tolerance_is_loose_on_cuda_with_tf32_convolutions(monkeypatch):
    monkeypatch.setattr(conf, "precision_label", lambda device, precision="float32": "float32 (TF32 convolutions)")
    assert conf._layout_tolerance(torch.device("cuda"), 1e-4) == 1e-2
    assert conf._layout_tolerance(torch.device("cuda"), 5e-2) == 5e-2
    assert conf._layout_tolerance(torch.device("cpu"), 1e-4) == 1e-4
    monkeypatch.setattr(conf, "precision_label", lambda device, precision="float32": "float32")
    assert conf._layout_tolerance(torch.device("cuda"), 1e-4) == 1e-4


class Off3e3ForChannelsLast(Near):
    """Like a correct conv net under TF32: channels_last input takes another kernel, 3e-3 away."""

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        out = super().restore(lr, scale, seed=seed, n_samples=n_samples)
        if lr.dim() == 4 and lr.stride(1) == 1:  # channels_last, sliced or not
            out = (out + 3e-3).clamp(0, 1) * (1 - 3e-3)
        return out


def test_check_method_uses_the_tf32_tolerance_for_layouts(monkeypatch):
    with pytest.raises(ConformanceError, match=r"as a channels_last tensor gives another output"):
        check_method(Off3e3ForChannelsLast)
    monkeypatch.setattr(conf, "_layout_tolerance", lambda device, tol: 1e-2)  # what CUDA + TF32 gives
    check_method(Off3e3ForChannelsLast)


# -- the built-in components pass ------------------------------------------------------------------

def test_every_builtin_loss_and_metric_passes_the_kit():
    results = run_conformance("restorekit", kinds=["losses", "metrics"])
    failed = [(r.id, r.detail) for r in results if r.status == "failed"]
    assert not failed, failed
    assert {r.id for r in results if r.status == "ok"} >= {"loss:w_norm", "loss:l1", "metric:psnr_rgb"}


def test_psp_sr_identity_loss_passes_the_kit():
    """Its default embedder builds dlib's network on the first call: not a global-state leak."""
    pytest.importorskip("restorekit_psp_sr")
    from restorekit.testing import collect_cases

    [case] = [c for c in collect_cases("psp_sr", kinds=["losses"]) if c.id == "loss:identity"]
    try:
        case.check()
    except Exception as exc:
        if type(exc).__name__ == "WeightsMissing":
            pytest.skip(str(exc))
        raise


def test_building_the_dlib_descriptor_leaves_the_global_rng_alone():
    from restorekit.errors import WeightsMissing
    from restorekit.faces.dlib_resnet import load_dlib_face_descriptor

    before = torch.get_rng_state()
    try:
        net = load_dlib_face_descriptor()
    except WeightsMissing as exc:
        pytest.skip(str(exc))
    assert torch.equal(before, torch.get_rng_state())
    assert not any(t.is_meta for t in net.state_dict().values())
    assert net.mean_rgb.flatten().tolist() == pytest.approx([122.782, 117.001, 104.298], abs=1e-3)


def test_the_dlib_descriptor_from_a_half_precision_state_dict_is_float32():
    """``from_state_dict`` assigns the tensors it is given; a float16 state dict (an fp16 export)
    still gives a float32 network that runs on float32 chips, as its own init would."""
    from restorekit.errors import WeightsMissing
    from restorekit.faces.dlib_resnet import DlibFaceDescriptor, load_dlib_face_descriptor

    try:
        net = load_dlib_face_descriptor()
    except WeightsMissing as exc:
        pytest.skip(str(exc))
    half = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    again = DlibFaceDescriptor.from_state_dict(half)
    assert {t.dtype for t in again.state_dict().values() if t.is_floating_point()} == {torch.float32}
    chips = torch.rand(1, 3, 150, 150, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.descriptor(chips), net.descriptor(chips), atol=2e-2, rtol=0)
