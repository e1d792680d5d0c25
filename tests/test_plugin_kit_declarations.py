"""The conformance kit gives components what they declare and judges them by it: a loss gets the
context entries it declares (``context_inputs``), a metric that declares ``nan_label`` may give NaN
on synthetic images but must measure a face photo, one-time lazy initialisation on a first call is
not a global-state leak, TF32 settings are global state, required options take their examples, and
the messages give every fix. The built-in components pass their own plugin's checks."""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from pydantic import Field

from restorekit.interfaces import Loss, LossContext, Method, MethodInfo, Metric, Options
from restorekit.testing import ConformanceError, check_loss, check_method, check_metric, run_conformance
from restorekit.testing import conformance as conf
from restorekit.testing.data import smooth_batch


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
                                               r"changed: (torch.backends.cuda.matmul.fp32_precision|"
                                               r"torch.get_float32_matmul_precision\(\))"):
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
    assert "`restorekit plugin check PLUGIN --opt near_ck.amount=VALUE --opt near_ck.radius=VALUE`" in msg, msg
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


# -- plugin-author walkthrough fixes (PA findings 1-10) ------------------------------------------

_B = torch.backends
_PER_OP = all(hasattr(getattr(getattr(_B, m), op, None), "fp32_precision")  # (no cudnn.rnn before torch 2.9)
              for m, op in (("cuda", "matmul"), ("cudnn", "rnn"), ("mkldnn", "conv"), ("mkldnn", "rnn")))
needs_per_op = pytest.mark.skipif(not _PER_OP, reason="torch < 2.9 has no per-operator fp32_precision")


def _raw_precision():
    return {path: conf._read(lambda o=o: o.fp32_precision) for path, o in conf._precision_objects()}


class FacePSNR(Metric):
    name: ClassVar[str] = "face_psnr_ck"
    higher_is_better: ClassVar[bool] = True
    nan_label: ClassVar[str] = "faces not found"

    def __call__(self, pred, target, *, lr, scale):
        found = target.flatten(1).std(1) > 0.01
        psnr = -10 * torch.log10((pred - target).pow(2).flatten(1).mean(1).double())
        return torch.where(found, psnr, torch.full_like(psnr, float("nan")))


def test_a_perfect_prediction_may_score_inf_on_the_face_photo_but_not_nan():
    """PA 1: +inf is psnr_rgb's score for a perfect prediction; only NaN means 'no face'."""
    face = smooth_batch(1, 64, 64, seed=5)[0]
    check_metric(FacePSNR, face_image=face)

    class NaNOnFace(FacePSNR):
        def __call__(self, pred, target, *, lr, scale):
            return torch.full((pred.shape[0],), float("nan"), dtype=torch.float64)

    with pytest.raises(ConformanceError, match=r"face_psnr_ck: a perturbed prediction of a face photo .* scores \[nan"):
        check_metric(NaNOnFace, face_image=face)


def _in_restore(make_cm):
    class Sets(Near):
        def restore(self, lr, scale, *, seed=None, n_samples=1):
            with make_cm():
                return super().restore(lr, scale, seed=seed, n_samples=n_samples)
    return Sets


def _setting(path, value):
    @contextlib.contextmanager
    def cm():
        obj = _B
        for part in filter(None, path.split(".")):
            obj = getattr(obj, part)
        obj.fp32_precision = value
        yield
    return cm


@contextlib.contextmanager
def _legacy_restored():
    old = _B.cuda.matmul.allow_tf32, _B.cudnn.allow_tf32
    _B.cuda.matmul.allow_tf32, _B.cudnn.allow_tf32 = not old[0], not old[1]
    try:
        yield
    finally:
        _B.cuda.matmul.allow_tf32, _B.cudnn.allow_tf32 = old


@contextlib.contextmanager
def _new_api_restored():
    objs = [_B.cuda.matmul, _B.cudnn.conv, _B.mkldnn.conv, _B]
    old = [o.fp32_precision for o in objs]
    _B.cuda.matmul.fp32_precision, _B.cudnn.conv.fp32_precision = "tf32", "ieee"
    _B.mkldnn.conv.fp32_precision, _B.fp32_precision = "bf16", "tf32"
    try:
        yield
    finally:
        for o, v in zip(objs, old):
            o.fp32_precision = v


@contextlib.contextmanager
def _new_set_legacy_restored():
    old = _B.cudnn.allow_tf32
    _B.cudnn.conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        _B.cudnn.allow_tf32 = old


@contextlib.contextmanager
def _legacy_set_matmul_precision_restored():
    old = torch.get_float32_matmul_precision()
    _B.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


@contextlib.contextmanager
def _matmul_precision_restored():
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


@needs_per_op
@pytest.mark.parametrize("make_cm", [_legacy_restored, _new_api_restored, _new_set_legacy_restored,
                                     _legacy_set_matmul_precision_restored, _matmul_precision_restored,
                                     lambda: _B.cudnn.flags(enabled=True, allow_tf32=False),
                                     _setting("mkldnn.matmul", "ieee")],  # the default spelt out: no effect
                         ids=["legacy", "new_api", "new_then_legacy", "legacy_then_matmul_precision",
                              "matmul_precision", "cudnn_flags", "same_effect"])
def test_tf32_set_and_restored_through_either_api_passes_and_every_raw_value_is_put_back(make_cm):
    before = _raw_precision()
    check_method(_in_restore(make_cm))
    assert _raw_precision() == before


@needs_per_op
@pytest.mark.parametrize("path, value, named", [
    ("mkldnn.conv", "bf16", r"torch.backends.mkldnn.conv.fp32_precision 'ieee' → 'bf16'"),
    ("mkldnn.rnn", "bf16", r"torch.backends.mkldnn.rnn.fp32_precision 'ieee' → 'bf16'"),
    ("mkldnn.matmul", "bf16", r"torch.backends.mkldnn.matmul.fp32_precision 'ieee' → 'bf16'"),
    ("cuda.matmul", "tf32", r"torch.backends.cuda.matmul.fp32_precision 'ieee' → 'tf32'"),  # PA 3: not 'unreadable'
    ("", "tf32", r"torch.backends.(mkldnn|cuda).\w+.fp32_precision 'ieee' → 'tf32'.*the raw settings that changed: "
                 r"torch.backends.fp32_precision 'none' → 'tf32'"),
])
def test_a_per_operator_precision_left_changed_fails_naming_it_and_is_put_back(path, value, named):
    """PA 2 and 3: the mkldnn settings were only recorded; the new API alone read as 'unreadable'."""
    before = _raw_precision()
    with pytest.raises(ConformanceError) as err:
        check_method(_in_restore(_setting(path, value)))
    msg = str(err.value)
    assert re.search(r"near_ck: restore\(\) left global state changed: " + named, msg), msg
    assert "unreadable" not in msg and "TF32 convolutions" not in msg, msg
    assert _raw_precision() == before


@needs_per_op
def test_legacy_set_and_new_api_restore_that_leaves_cudnn_rnn_changed_fails():
    """PA 2: allow_tf32=False sets conv and rnn; restoring conv alone leaves rnn at IEEE."""
    @contextlib.contextmanager
    def cm():
        old = _B.cudnn.conv.fp32_precision
        _B.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            _B.cudnn.conv.fp32_precision = old

    before = _raw_precision()
    with pytest.raises(ConformanceError, match=r"torch.backends.cudnn.rnn.fp32_precision 'tf32' → 'ieee'"):
        check_method(_in_restore(cm))
    assert _raw_precision() == before


class SetsThreads(Near):
    chosen: ClassVar[list] = []

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        if not SetsThreads.chosen:
            SetsThreads.chosen.append(1 if torch.get_num_threads() != 1 else 2)
        torch.set_num_threads(SetsThreads.chosen[0])
        return super().restore(lr, scale, seed=seed, n_samples=n_samples)


def test_the_fix_text_fits_the_setting():
    """PA 9: the thread fix does not talk about TF32; the precision fix does."""
    threads = torch.get_num_threads()
    SetsThreads.chosen.clear()
    with pytest.raises(ConformanceError) as err:
        check_method(SetsThreads)
    assert torch.get_num_threads() == threads
    msg = str(err.value)
    assert "torch.set_num_threads" in msg and "TF32" not in msg and "tf32" not in msg, msg
    if _PER_OP:
        with pytest.raises(ConformanceError) as err:
            check_method(_in_restore(_setting("cuda.matmul", "tf32")))
        assert "allow_tf32" in str(err.value) and "set_num_threads" not in str(err.value)


class BadExample(Options):
    gain: float = Field(description="multiply", ge=0, le=2, examples=[5.0])


class UsesBadExample(Near):
    Options = BadExample


def test_an_invalid_example_is_named_as_the_example():
    """PA 9: 'Options None are not valid: ValidationError …' named neither the field's examples nor a fix."""
    with pytest.raises(ConformanceError) as err:
        check_method(UsesBadExample)
    msg = str(err.value)
    assert msg.startswith("near_ck: Options are not valid: 'gain': its examples[0] 5.0, which the check used as "
                          "the value, is not valid (Input should be less than or equal to 2)"), msg
    assert "None" not in msg and "errors.pydantic.dev" not in msg, msg
    assert "--opt near_ck.gain=VALUE" in msg, msg


class OptionalAvg(Loss):
    name: ClassVar[str] = "optional_avg_ck"
    context_inputs: ClassVar[tuple[LossContext, ...]] = (
        LossContext("latents", (4, 8)), LossContext("latent_avg", (4, 8), per_image=False, required=False))

    def __call__(self, pred, target, **context):
        lat = context["latents"]
        avg = context.get("latent_avg")
        return (pred - target).abs().mean() + (lat if avg is None else lat - avg).pow(2).mean()


class NeedsItAfterAll(OptionalAvg):
    def __call__(self, pred, target, **context):
        return (pred - target).abs().mean() + (context["latents"] - context["latent_avg"]).pow(2).mean()


class ReadsAnotherName(Loss):
    name: ClassVar[str] = "typo_ck"
    context_inputs: ClassVar[tuple[LossContext, ...]] = (LossContext("latent", (4, 8)),)

    def __call__(self, pred, target, **context):
        return (pred - target).abs().mean() + context["latents"].pow(2).mean()


def test_an_entry_declared_not_required_is_left_out_once_and_a_misspelt_entry_is_named():
    """PA 8b and 9: LossContext.required had no effect; a KeyError on another name had no hint."""
    check_loss(OptionalAvg)
    with pytest.raises(ConformanceError, match=r"optional_avg_ck: __call__ without the context entries declared "
                                               r"required=False \('latent_avg'\) raised: KeyError: 'latent_avg'"):
        check_loss(NeedsItAfterAll)
    with pytest.raises(ConformanceError, match=r"typo_ck: __call__ raised: KeyError: 'latents'; it reads context "
                                               r"entry 'latents' but context_inputs declares only 'latent' "
                                               r"\(did you mean 'latent'\?\)"):
        check_loss(ReadsAnotherName)


class NaNOnFlat(MeanAbs):
    name: ClassVar[str] = "relative_ck"

    def __call__(self, pred, target, *, lr, scale):  # 0/0 on an all-black image
        return ((pred - target).abs().flatten(1).mean(1) / target.flatten(1).mean(1)).double()


def test_a_metric_without_nan_label_is_scored_on_constant_images():
    """PA 8a: NaN only on flat images passed, and showed up first in someone's compare."""
    check_metric(MeanAbs)
    with pytest.raises(ConformanceError, match=r"relative_ck: a perfect prediction of a batch of constant images "
                                               r"\(all 0, all 1, all 0.5; 32×32\) scores \[nan"):
        check_metric(NaNOnFlat)


def test_a_missing_required_option_names_every_field_with_its_example_and_both_opt_forms():
    """PA 7: run/compare said "option 'gain': Field required (got {})"."""
    from restorekit.options import OptionError, validate

    class Two(Options):
        gain: float = Field(description="g", examples=[0.9])
        bias: float = Field(description="b")

    with pytest.raises(OptionError) as err:
        validate(Two, {}, label="fp_gain")
    assert str(err.value) == ("fp_gain: required options 'gain', 'bias' not given: pass --opt gain=VALUE (e.g. 0.9) "
                              "--opt bias=VALUE (commands that name the method in --opt, compare and serve: "
                              "--opt fp_gain.gain=VALUE --opt fp_gain.bias=VALUE)")


KIT_PLUGIN = '''
from typing import ClassVar, Literal
from pydantic import Field
from restorekit.hookspecs import hookimpl
from restorekit.interfaces import Degradation, Loss, Method, MethodInfo, Metric, Options
import torch


class GainOptions(Options):
    gain: float = Field(ge=0, le=2, examples=[0.9], description="multiply the output")


class Gain(Method):
    info: ClassVar[MethodInfo] = MethodInfo(name="gain3p", summary="nearest, times gain")
    Options = GainOptions

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        self.check_scale(scale)
        out = torch.nn.functional.interpolate(lr.float(), scale_factor=scale, mode="nearest") * self.options.gain
        return out.clamp(0, 1).repeat_interleave(n_samples, 0)


class Leaky(Gain):
    info: ClassVar[MethodInfo] = MethodInfo(name="leaky3p", summary="leaves a precision setting changed")

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        torch.backends.mkldnn.conv.fp32_precision = "bf16"
        return super().restore(lr, scale, seed=seed, n_samples=n_samples)


class Mode(Degradation):
    name: ClassVar[str] = "mode3p"

    class Params(Options):
        mode: Literal["dark", "light"] = Field(description="which way")

    def __call__(self, hr, *, generator=None):
        return (hr * 0.5 + (0.5 if self.params.mode == "light" else 0.0)).clamp(0, 1)

    def spec(self):
        return f"{self.name}:{self.params.mode}"


class Charb(Loss):
    name: ClassVar[str] = "charb3p"

    def __init__(self, weight: float = 1.0, eps: float = 1e-3):
        super().__init__(weight)
        assert isinstance(eps, float), type(eps)
        self.eps = eps

    def __call__(self, pred, target, **context):
        return ((pred - target) ** 2 + self.eps ** 2).sqrt().mean()


class MeanAbs(Metric):
    name: ClassVar[str] = "meanabs3p"
    higher_is_better: ClassVar[bool] = False

    def __call__(self, pred, target, *, lr, scale):
        return (pred - target).abs().flatten(1).mean(1).double()


@hookimpl
def register_methods(register):
    register(Gain)
    if LEAKY:
        register(Leaky)


@hookimpl
def register_degradations(register):
    register(Mode)


@hookimpl
def register_losses(register):
    register(Charb)


@hookimpl
def register_metrics(register):
    register(MeanAbs)
'''


def _kit_cli(*args, env=None):
    from restorekit.cli import build_cli

    return CliRunner(env=env).invoke(build_cli(), ["plugin", "check", *args])


def test_plugin_check_opt_reaches_every_kind_and_refuses_what_it_cannot_set(plugin_site):
    """PA 4, 5, 9: --opt went to a method's options only; the hint's command lacked the plugin name;
    a misspelt component had no did-you-mean."""
    plugin_site("thirdparty-kitopts", "thirdparty_kitopts", KIT_PLUGIN.replace("LEAKY", "False"))
    r = _kit_cli("thirdparty_kitopts", "--json", "-q")
    assert r.exit_code == 1
    rows = {x["id"]: x for x in json.loads(r.stdout)}
    assert rows["method:gain3p"]["status"] == "ok"  # its example fills the required option
    assert ("`restorekit plugin check thirdparty_kitopts --opt mode3p.mode=VALUE`"
            in rows["degradation:mode3p"]["detail"]), rows
    r = _kit_cli("thirdparty_kitopts", "--json", "-q", "--opt", "mode3p.mode=light", "--opt", "gain3p.gain=0.5",
                 "--opt", "charb3p.eps=0.01")
    assert r.exit_code == 0, r.output
    assert {x["status"] for x in json.loads(r.stdout)} == {"ok"}
    for opt, message in [
        ("meanabs3p.x=1", "'meanabs3p' is a metric, which takes no options"),
        ("gian3p.gain=1", "plugin 'thirdparty_kitopts' registers no component 'gian3p' (did you mean 'gain3p'?)"),
        ("gain3p.gian=1", "method 'gain3p' has no option 'gian' (did you mean 'gain'?)"),
        ("mode3p.mood=light", "degradation 'mode3p' has no option 'mood' (did you mean 'mode'?)"),
        ("charb3p.weight=2", "the check sets a loss's weight itself"),
    ]:
        r = _kit_cli("thirdparty_kitopts", "--opt", opt)
        assert r.exit_code == 2 and message in r.stderr, (opt, r.output)
        assert len(r.stderr.strip().splitlines()[-1]) > 20  # one line


@needs_per_op
def test_plugin_check_table_folds_the_detail_at_80_columns(plugin_site):
    """PA 10: at 80 columns the detail ended in '…' before the name of the changed setting."""
    plugin_site("thirdparty-kitleak", "thirdparty_kitleak", KIT_PLUGIN.replace("LEAKY", "True"))
    before = _raw_precision()
    r = _kit_cli("thirdparty_kitleak", "-q", "--opt", "mode3p.mode=dark", env={"COLUMNS": "80"})
    assert _raw_precision() == before
    assert r.exit_code == 1
    assert "…" not in r.stdout, r.stdout
    detail = "".join(line.split("│")[-2].strip() for line in r.stdout.splitlines() if line.count("│") >= 5)
    assert "torch.backends.mkldnn.conv.fp32_precision'ieee'→'bf16'" in detail.replace(" ", ""), r.stdout


def test_methods_show_lists_an_options_examples(plugin_site):
    """PA 7: `methods show` printed 'gain float required' without the example."""
    from restorekit.cli import build_cli

    plugin_site("thirdparty-kitopts", "thirdparty_kitopts", KIT_PLUGIN.replace("LEAKY", "False"))
    r = CliRunner().invoke(build_cli(), ["methods", "show", "gain3p"])
    assert r.exit_code == 0, r.output
    assert "gain  float required (e.g. 0.9)" in r.output, r.output
    r = CliRunner().invoke(build_cli(), ["methods", "show", "gain3p", "--json"])
    assert json.loads(r.stdout)["options"][0]["examples"] == [0.9]


def test_the_docs_explain_nan_label_in_the_metrics_section_and_its_snippet_passes():
    """PA 6: nan_label was explained under register_losses."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text(encoding="utf-8")
    metrics = text[text.index("### `register_metrics"):text.index("### `register_degradations")]
    losses = text[text.index("### `register_losses"):text.index("### Factory kinds")]
    assert "nan_label" in metrics and "nan_label" not in losses and "LossContext" in losses
    assert "required=False" in losses and "context.get(" in losses
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", metrics, re.S) if "nan_label" in b)
    space: dict = {}
    exec(compile(snippet, "plugins.md", "exec"), space)
    check_metric(space["FacePSNR"], face_image=smooth_batch(1, 64, 64, seed=5)[0])
