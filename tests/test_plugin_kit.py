"""The kit for third-party plugin authors: conformance checks, parametrized cases, fixtures and
`restorekit plugin new`, down to a generated plugin installed, tested and compared end to end."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import stat
import sys
import tomllib
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from pydantic import Field

from restorekit import plugins
from restorekit.cli import build_cli
from restorekit.commands.plugin_new import LICENSES, PLACEHOLDER, plugin_names, write_project
from restorekit.degradations import Blur, Bicubic, Jpeg
from restorekit.interfaces import (Degradation, Encoder, Face, FaceDetector, FaceEmbedder, Generator, Loss,
                                   Method, MethodInfo, Metric, Options)
from restorekit.registry_schema import load_entry
from restorekit.testing import (ConformanceError, check_degradation, check_encoder, check_face_detector,
                                check_face_embedder, check_generator, check_loss, check_method, check_metric,
                                collect_cases, conformance_cases, example_params, run_conformance)
from restorekit.testing.data import smooth_image

from plugin_sources import GOOD_PLUGIN, command_plugin_source, write_plugin_dist


def invoke(*args: str):
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


# -- components that break one contract each ------------------------------------------------

class UpOptions(Options):
    gain: float = Field(1.0, ge=0, le=2, description="multiplies the output")


class Up(Method):
    """A correct nearest-neighbour method; subclasses break it one way at a time."""

    info: ClassVar[MethodInfo] = MethodInfo(name="up_kit", summary="nearest-neighbour upscaling")
    Options = UpOptions

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        self.check_scale(scale)
        out = F.interpolate(lr.float(), scale_factor=scale, mode="nearest") * self.options.gain
        return out.clamp(0, 1).repeat_interleave(n_samples, 0)


class UpUnclamped(Up):
    def restore(self, lr, scale, *, seed=None, n_samples=1):
        return super().restore(lr, scale, n_samples=n_samples) * 1.5


class UpSeeded(Up):
    def restore(self, lr, scale, *, seed=None, n_samples=1):
        out = super().restore(lr, scale, n_samples=n_samples)
        return (out + 0.01 * torch.rand(out.shape, generator=torch.Generator().manual_seed(seed or 0))).clamp(0, 1)


class UpSeededSingle(UpSeeded):
    info: ClassVar[MethodInfo] = MethodInfo(name="up_s", summary="s", deterministic=False,
                                            single_sample_deterministic=True)


class UpInPlace(Up):
    def restore(self, lr, scale, *, seed=None, n_samples=1):
        lr.clamp_(0.1, 0.9)
        return super().restore(lr, scale, n_samples=n_samples)


class UpFloatScale(Up):
    def restore(self, lr, scale, *, seed=None, n_samples=1):
        if scale < 1:
            raise ValueError("bad scale")
        out = F.interpolate(lr.float(), scale_factor=scale, mode="nearest")
        return out.clamp(0, 1).repeat_interleave(n_samples, 0)


class UpBatchNorm(Up):
    def restore(self, lr, scale, *, seed=None, n_samples=1):
        out = super().restore(lr, scale, n_samples=n_samples)
        return (out - out.mean() + 0.5).clamp(0, 1)  # depends on the other images


class UpSampleMajor(Up):
    def restore(self, lr, scale, *, seed=None, n_samples=1):
        out = super().restore(lr, scale)
        return out.repeat(n_samples, 1, 1, 1)  # sample-major: wrong layout


class UpOddSizes(Up):
    def restore(self, lr, scale, *, seed=None, n_samples=1):
        self.check_scale(scale)
        h, w = (lr.shape[-2] // 2) * 2 * scale, (lr.shape[-1] // 2) * 2 * scale
        return F.interpolate(lr.float(), size=(h, w), mode="nearest").repeat_interleave(n_samples, 0)


class UndocumentedOptions(Options):
    gain: float = 1.0


class UpUndocumented(Up):
    Options = UndocumentedOptions


class MisnamedNeutral(UpOptions):
    result_neutral: ClassVar[frozenset[str]] = frozenset({"quiet"})  # no such field


class UpMisnamedNeutral(Up):
    Options = MisnamedNeutral


class OutOfBoundsDefault(Options):
    gain: float = Field(10.0, ge=0, le=2, description="multiplies the output")


class UpBadDefault(Up):
    Options = OutOfBoundsDefault


class UpBadName(Up):
    info: ClassVar[MethodInfo] = MethodInfo(name="up.kit", summary="a dot breaks --opt METHOD.KEY")


class UpMissingWeights(Up):
    info: ClassVar[MethodInfo] = MethodInfo(name="up_w", summary="s", requires_weights=("no-such-weights",))


class UpFixedScale(Up):
    """Calls check_scale, then upsamples ×2 whatever scale it is asked for."""

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        self.check_scale(scale)
        return F.interpolate(lr.float(), scale_factor=2, mode="nearest").clamp(0, 1).repeat_interleave(n_samples, 0)


class UpFixedScaleListed(UpFixedScale):
    info: ClassVar[MethodInfo] = MethodInfo(name="up_fixed", summary="s", scales=(2, 4))


class UpOnlyTwo(UpFixedScale):
    info: ClassVar[MethodInfo] = MethodInfo(name="up_two", summary="s", scales=(2,))


class UpSeedNone(Up):
    """Deterministic, but seed=None (what `run` passes by default) takes another path."""

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        out = super().restore(lr, scale, n_samples=n_samples)
        return out * 0.5 if seed is None else out


class UpMultiRange(Up):
    """Deterministic; its n_samples output is ×255."""

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        out = super().restore(lr, scale, n_samples=n_samples)
        return out * 255 if n_samples > 1 else out


class UpMutateLater(Up):
    """Deterministic; modifies its input during the n_samples call only."""

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        if n_samples > 1:
            lr.mul_(0.5)
        return super().restore(lr, scale, n_samples=n_samples)


class UpNoBatch(Up):
    def restore(self, lr, scale, *, seed=None, n_samples=1):
        if lr.shape[0] > 1:
            raise RuntimeError("one image at a time")
        return super().restore(lr, scale, n_samples=n_samples)


class UpSamplesDiffer(Up):
    """Declared deterministic, but its samples differ from each other."""

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        out = super().restore(lr, scale, n_samples=n_samples)
        return out * torch.linspace(1, 0.5, n_samples).repeat(lr.shape[0])[:, None, None, None]


class Stoch(Up):
    """A correct stochastic method: noise drawn from the seed (None: 0), samples image-major."""

    info: ClassVar[MethodInfo] = MethodInfo(name="stoch_kit", summary="noisy upscaling", deterministic=False)

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        out = super().restore(lr, scale, n_samples=n_samples)
        g = torch.Generator().manual_seed(0 if seed is None else seed)
        return (out + 0.02 * torch.rand(out.shape, generator=g)).clamp(0, 1)


class StochSeedNone(Stoch):
    """torch.Generator().manual_seed(None) raises: `run` without --seed crashed."""

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        torch.Generator().manual_seed(seed)
        return super().restore(lr, scale, seed=seed, n_samples=n_samples)


class StochMultiRange(Stoch):
    def restore(self, lr, scale, *, seed=None, n_samples=1):
        out = super().restore(lr, scale, seed=seed, n_samples=n_samples)
        return out * 255 if n_samples > 1 else out


class StochHalf(Stoch):
    def restore(self, lr, scale, *, seed=None, n_samples=1):
        out = super().restore(lr, scale, seed=seed, n_samples=n_samples)
        return out.half() if n_samples > 1 else out


class StochSampleMajor(Stoch):
    def restore(self, lr, scale, *, seed=None, n_samples=1):
        out = Up.restore(self, lr, scale).repeat(n_samples, 1, 1, 1)  # sample-major: wrong layout
        g = torch.Generator().manual_seed(0 if seed is None else seed)
        return (out + 0.02 * torch.rand(out.shape, generator=g)).clamp(0, 1)


class StochMutateLater(Stoch):
    def restore(self, lr, scale, *, seed=None, n_samples=1):
        if n_samples > 1:
            lr.mul_(0.5)
        return super().restore(lr, scale, seed=seed, n_samples=n_samples)


class StochBatchMean(Stoch):
    """Normalises by the batch mean: an image's samples depend on the other images."""

    def restore(self, lr, scale, *, seed=None, n_samples=1):
        out = super().restore(lr, scale, seed=seed, n_samples=n_samples)
        return (out - out.mean() + 0.5).clamp(0, 1)


def test_check_method_passes_a_correct_method():
    m = check_method(Up, options={"gain": 1.0})
    assert isinstance(m, Up) and m.options.gain == 1.0


@pytest.mark.parametrize("cls, message", [
    (UpUnclamped, "leaves \\[0,1\\]"),
    (UpSeeded, "declared deterministic but one sample depends on seed"),
    (UpSeededSingle, "declared single_sample_deterministic but one sample depends on seed"),
    (UpInPlace, "modified its input in place"),
    (UpFloatScale, "scale 2.5 must raise ValueError"),
    (UpBatchNorm, "restored alone differs"),
    (UpSampleMajor, "image-major"),
    (UpOddSizes, "an 11×9 input gave"),
    (UpUndocumented, "field 'gain' needs a description"),
    (UpMisnamedNeutral, "Options.result_neutral names no field of it: quiet"),
    (UpBadDefault, "Options defaults are not valid values: ValidationError: .*gain"),
    (UpBadName, "method names use letters"),
    (UpMissingWeights, "no-such-weights"),
    # A second scale: ×2 whatever it is asked for used to pass and fail in `run --scale 4`.
    (UpFixedScale, r"one image at scale 3 gave output shape \(1, 3, 24, 20\), expected \(1, 3, 36, 30\)"),
    (UpFixedScaleListed, r"one image at scale 4 gave output shape \(1, 3, 24, 20\), expected \(1, 3, 48, 40\)"),
    # seed=None, as `run` passes without --seed.
    (UpSeedNone, "declared deterministic but seed=None gives another output than seed=0"),
    (StochSeedNone, r"stoch_kit: restore raised on the 2-image batch with seed=None: RuntimeError: manual_seed"),
    # Every call's output and input are checked, also the n_samples ones of stochastic methods.
    (StochMultiRange, r"output leaves \[0,1\] for .*n_samples=2 \(min .*, max 2"),
    (StochHalf, r"output must be float32, got torch.float16 for .*n_samples=2"),
    (StochSampleMajor, "n_samples must be image-major"),
    (StochMutateLater, r"restore\(\) on .*n_samples=2 modified its input in place"),
    (StochBatchMean, "an image's samples must not depend on the other images"),
    # The real problem, not "image-major"; and which call raised.
    (UpMultiRange, r"output leaves \[0,1\] for .*n_samples=2"),
    (UpMutateLater, r"restore\(\) on .*n_samples=2 modified its input in place"),
    (UpSamplesDiffer, "declared deterministic but its n_samples=2 samples are not its one output repeated"),
    (UpNoBatch, r"up_kit: restore raised on the 2-image batch \(scale 2, seed 0\): RuntimeError: one image at a time"),
])
def test_check_method_catches_each_broken_contract(cls, message):
    with pytest.raises(ConformanceError, match=message):
        check_method(cls)


def test_check_method_passes_what_is_right_beside_the_broken_ones():
    check_method(Stoch)  # stochastic, image-major, seed=None handled
    check_method(UpOnlyTwo)  # one scale listed: no second scale to try
    check_method(UpOnlyTwo, scale=2)
    check_method(StochBatchMean, samples_batch_independent=False)  # documented batch dependence
    with pytest.raises(ConformanceError, match="modified its input in place"):  # the rest still holds
        check_method(StochMutateLater, samples_batch_independent=False)
    # `scale` given: the second scale is another one (here 3), so the wrong size is still found.
    with pytest.raises(ConformanceError, match="at scale 3 gave"):
        check_method(UpFixedScale, scale=2)


class AbsDiff(Metric):
    name: ClassVar[str] = "absdiff_kit"
    higher_is_better: ClassVar[bool] = False

    def __call__(self, pred, target, *, lr, scale):
        return (pred - target).abs().flatten(1).mean(1).double()


class AbsDiffFloat32(AbsDiff):
    def __call__(self, pred, target, *, lr, scale):
        return super().__call__(pred, target, lr=lr, scale=scale).float()


class AbsDiffBatchMean(AbsDiff):
    def __call__(self, pred, target, *, lr, scale):
        v = super().__call__(pred, target, lr=lr, scale=scale)
        return v / v.mean().clamp_min(1e-12)


class AbsDiffWrongDirection(AbsDiff):
    higher_is_better: ClassVar[bool] = True


def test_check_metric_passes_and_catches():
    assert isinstance(check_metric(AbsDiff), AbsDiff)
    for cls, msg in [(AbsDiffFloat32, "float64"), (AbsDiffBatchMean, "values must be per image"),
                     (AbsDiffWrongDirection, "a perfect prediction scores")]:
        with pytest.raises(ConformanceError, match=msg):
            check_metric(cls)


def test_example_params_picks_small_valid_values():
    assert example_params(Bicubic.Params).scale == 2
    assert example_params(Blur.Params).sigma == 1.0
    assert example_params(Jpeg.Params).quality == 2

    class Narrow(Options):
        strength: float = Field(gt=0, le=0.5, description="d")
        steps: int = Field(ge=5, description="d")
        mode: str = Field("a", description="d")

    p = example_params(Narrow)
    assert (p.strength, p.steps, p.mode) == (0.5, 5, "a")

    class NeedsText(Options):
        path: str = Field(description="d")

    with pytest.raises(ConformanceError, match="pass params"):
        example_params(NeedsText)


class GlobalNoise(Degradation):
    """Uses the global RNG instead of the generator it is given."""

    name: ClassVar[str] = "globalnoise_kit"
    Params = Blur.Params

    def __call__(self, hr, *, generator=None):
        return (hr + 0.01 * torch.randn(hr.shape)).clamp(0, 1)

    def spec(self):
        return f"{self.name}:{self.params.sigma:g}"


class LossySpec(Degradation):
    name: ClassVar[str] = "lossyspec_kit"
    Params = Blur.Params

    def __call__(self, hr, *, generator=None):
        return hr.clone()

    def spec(self):
        return f"{self.name}:{round(self.params.sigma) + 1}"


class WrongSize(Bicubic):
    name: ClassVar[str] = "wrongsize_kit"

    def __call__(self, hr, *, generator=None):
        return F.avg_pool2d(hr, self.params.scale, ceil_mode=True)

    def spec(self):
        return f"{self.name}:{self.params.scale}"


def test_check_degradation_passes_builtins_and_catches():
    assert check_degradation(Blur, params={"sigma": 0.7}).spec() == "blur:0.7"
    for cls, msg in [(GlobalNoise, "same generator seed"), (LossySpec, "rebuilds params"),
                     (WrongSize, "scale 2 gave")]:
        with pytest.raises(ConformanceError, match=msg):
            check_degradation(cls, hr=torch.rand(2, 3, 13, 11) if cls is WrongSize else None)


class SumLoss(Loss):
    name: ClassVar[str] = "sum_kit"

    def __call__(self, pred, target, **context):
        return (pred - target).abs().sum(dim=(1, 2, 3))  # per image: not a scalar


class DetachedLoss(Loss):
    name: ClassVar[str] = "detached_kit"

    def __call__(self, pred, target, **context):
        return (pred.detach() - target).pow(2).mean()


class UpsideDownLoss(Loss):
    name: ClassVar[str] = "upside_kit"

    def __call__(self, pred, target, **context):
        return -(pred - target).pow(2).mean()


def test_check_loss_catches():
    for cls, msg in [(SumLoss, "0-dim"), (DetachedLoss, "not differentiable"), (UpsideDownLoss, "perfect prediction")]:
        with pytest.raises(ConformanceError, match=msg):
            check_loss(cls)


class TinyGenerator(Generator):
    """A 2-layer MLP 'generator' at 8 px; ``symmetric`` leaves it in [-1, 1]."""

    def __init__(self, symmetric: bool = False, detach: bool = False) -> None:
        super().__init__()
        self.z_dim, self.style_dim, self.n_styles, self.resolution = 6, 6, 3, 8
        self.mapping = torch.nn.Linear(6, 6)
        self.synth = torch.nn.Linear(18, 3 * 64)
        torch.nn.init.zeros_(self.synth.bias)
        self.symmetric, self.detach = symmetric, detach

    def map(self, z):
        return self.mapping(z)

    def synthesize(self, w_plus, *, noise_mode="const", noise=None):
        x = w_plus.detach() if self.detach else w_plus
        img = torch.tanh(self.synth(x.flatten(1))).view(-1, 3, 8, 8)
        return img if self.symmetric else (img + 1) / 2


class TinyEncoder(Encoder):
    def __init__(self, batch_stats: bool = False) -> None:
        super().__init__()
        self.n_styles, self.style_dim, self.input_size = 3, 6, 16
        self.net = torch.nn.Linear(3 * 16 * 16, 18)
        self.batch_stats = batch_stats

    def encode(self, image):
        out = self.net(image.flatten(1)).view(-1, 3, 6)
        return out - out.mean(0) if self.batch_stats else out


def test_check_generator_and_encoder():
    torch.manual_seed(0)
    check_generator(TinyGenerator)
    check_generator(TinyGenerator, trained=True)
    with pytest.raises(ConformanceError, match="no finite gradient reaches w_plus"):
        check_generator(lambda: TinyGenerator(detach=True))
    with pytest.raises(ConformanceError, match="must return the \\[0,1\\] convention"):
        check_generator(lambda: TinyGenerator(symmetric=True), trained=True)
    check_encoder(TinyEncoder)
    with pytest.raises(ConformanceError, match="depends on the rest of the batch"):
        check_encoder(lambda: TinyEncoder(batch_stats=True))
    with pytest.raises(ConformanceError, match="must subclass restorekit.interfaces.Encoder"):
        check_encoder(lambda: torch.nn.Identity())


class MeanColourEmbedder(FaceEmbedder):
    name: ClassVar[str] = "meancolour_kit"

    def __init__(self, normalise: bool = True) -> None:
        self.normalise = normalise

    def embed(self, faces):
        e = torch.cat([faces.mean(dim=(2, 3)), faces.std(dim=(2, 3))], 1)
        return F.normalize(e, dim=1) if self.normalise else e


class BrightSpotDetector(FaceDetector):
    """'Finds' a face wherever the image is not flat; ``box_outside`` reports nonsense boxes."""

    name: ClassVar[str] = "brightspot_kit"

    def __init__(self, box_outside: bool = False) -> None:
        self.box_outside = box_outside

    def detect(self, image):
        if float(image.std()) < 1e-3:
            return []
        h, w = image.shape[-2:]
        box = (0.0, 0.0, 3.0 * w, 3.0 * h) if self.box_outside else (w / 4, h / 4, 3 * w / 4, 3 * h / 4)
        return [Face(box=box, score=0.9, landmarks=[(w / 2, h / 2)])]


def test_check_face_embedder_and_detector():
    check_face_embedder(MeanColourEmbedder)
    with pytest.raises(ConformanceError, match="unit norm"):
        check_face_embedder(lambda: MeanColourEmbedder(normalise=False))
    face = torch.from_numpy(smooth_image(64, 64, 5)).permute(2, 0, 1).float() / 255
    check_face_detector(BrightSpotDetector, face_image=face)
    with pytest.raises(ConformanceError, match="lies outside"):
        check_face_detector(lambda: BrightSpotDetector(box_outside=True), face_image=face)


# -- cases over a whole plugin ---------------------------------------------------------------

def test_conformance_cases_cover_what_a_plugin_registers(plugin_site):
    plugin_site("thirdparty-nearest", "thirdparty_nearest", GOOD_PLUGIN)
    params = conformance_cases(plugin="thirdparty_nearest")
    assert [p.id for p in params] == ["method:nearest3p", "metric:mean_abs_3p"]
    results = run_conformance("thirdparty_nearest")
    assert [(r.id, r.status) for r in results] == [("method:nearest3p", "ok"), ("metric:mean_abs_3p", "ok")]
    with pytest.raises(ConformanceError, match="configs name \\['nearest'\\]"):
        collect_cases("thirdparty_nearest", configs={"nearest": {}})
    with pytest.raises(ConformanceError, match="plugin 'thirdparty_nearst' is not installed.*did you mean"):
        collect_cases("thirdparty_nearst")
    skipped = conformance_cases(plugin="thirdparty_nearest", skip={"metric:mean_abs_3p": "not today"})
    assert skipped[1].marks[0].kwargs["reason"] == "not today"


def test_plugin_check_command(plugin_site):
    plugin_site("thirdparty-nearest", "thirdparty_nearest", GOOD_PLUGIN)
    plugin_site("thirdparty-unclamped", "thirdparty_unclamped", GOOD_PLUGIN.replace(
        '"nearest3p"', '"unclamped3p"').replace('"mean_abs_3p"', '"mean_abs2_3p"').replace(".clamp(0, 1)", ".mul(2)"))
    r = invoke("plugin", "check", "thirdparty_nearest", "--json")
    assert r.exit_code == 0, r.output
    assert [(x["id"], x["status"]) for x in json.loads(r.stdout)] == [("method:nearest3p", "ok"),
                                                                     ("metric:mean_abs_3p", "ok")]
    r = invoke("plugin", "check", "thirdparty_unclamped", "--json")
    assert r.exit_code == 1
    rows = {x["id"]: x for x in json.loads(r.stdout)}
    assert rows["method:unclamped3p"]["status"] == "failed" and "leaves [0,1]" in rows["method:unclamped3p"]["detail"]
    assert rows["metric:mean_abs2_3p"]["status"] == "ok"
    r = invoke("plugin", "check", "thirdparty_nearst")
    assert r.exit_code == 2 and "did you mean 'thirdparty_nearest'" in r.output


def test_config_keys_must_fit_the_check(plugin_site):
    plugin_site("thirdparty-nearest", "thirdparty_nearest", GOOD_PLUGIN)
    (case, _) = collect_cases("thirdparty_nearest", configs={"nearest3p": {"optons": {}}})
    with pytest.raises(ConformanceError, match="config keys \\['optons'\\] are not arguments of check_method"):
        case.check()


def test_broken_plugin_gives_one_failing_case(plugin_site):
    plugin_site("thirdparty-broken", "thirdparty_broken", "raise ImportError('broken on purpose')\n")
    (case,) = collect_cases("thirdparty_broken")
    with pytest.raises(ConformanceError, match="broken: ImportError: broken on purpose"):
        case.run()


def test_a_commands_only_plugin_gets_a_case_instead_of_an_empty_skipped_test(plugin_site):
    plugin_site("thirdparty-cmdonly", "thirdparty_cmdonly", command_plugin_source("cmdonly", "hello-cmdonly3p"))
    params = conformance_cases(plugin="thirdparty_cmdonly")
    assert [p.id for p in params] == ["commands:thirdparty_cmdonly"]
    params[0].values[0].run()
    assert [(r.id, r.status) for r in run_conformance("thirdparty_cmdonly")] == [("commands:thirdparty_cmdonly", "ok")]
    # A plugin with components and commands gets both kinds of case.
    plugin_site("thirdparty-both", "thirdparty_both", GOOD_PLUGIN + command_plugin_source("both", "hello-both3p"))
    assert [c.id for c in collect_cases("thirdparty_both")] == ["method:nearest3p", "metric:mean_abs_3p",
                                                                "commands:thirdparty_both"]
    assert [c.id for c in collect_cases("thirdparty_both", kinds=["commands"])] == ["commands:thirdparty_both"]


def test_a_selection_without_cases_is_an_error_not_a_skip(plugin_site):
    plugin_site("thirdparty-nearest", "thirdparty_nearest", GOOD_PLUGIN)
    with pytest.raises(ConformanceError, match="plugin 'thirdparty_nearest' registers no losses: a selection "
                                               "without cases"):
        conformance_cases(plugin="thirdparty_nearest", kinds=["losses"])
    with pytest.raises(ConformanceError, match="registers no commands"):
        collect_cases("thirdparty_nearest", kinds=["commands"])


@pytest.mark.parametrize("hook, why", [
    ('''
    raise RuntimeError("no commands today")''', r"RuntimeError: no commands today"),
    ('''
    @cli.command("run")
    def run():
        """Not the real run."""''', r"command 'run' is added by both the core \('restorekit'\) and 'thirdparty_cmdbad'"),
    ('''
    import click
    click.option("--fast")(cli.commands["run"])''', r"it changes existing commands it did not add: 'run' \(params\)"),
], ids=["raises", "replaces-run", "changes-run"])
def test_a_broken_command_hook_fails_the_pytest_cases_as_it_fails_plugin_check(plugin_site, hook, why):
    # The pytest path used the registry alone, where command hooks never ran: the method passed.
    plugin_site("thirdparty-cmdbad", "thirdparty_cmdbad",
                GOOD_PLUGIN + "\n\n@hookimpl\ndef register_commands(cli):" + hook + "\n")
    (case,) = conformance_cases(plugin="thirdparty_cmdbad")
    with pytest.raises(ConformanceError, match="plugin 'thirdparty_cmdbad' is broken: register_commands: .*" + why):
        case.values[0].run()
    [result] = run_conformance("thirdparty_cmdbad")
    assert result.status == "failed" and re.search(why, result.detail)
    # The real command is untouched by the cases' CLI.
    assert "--fast" not in {o for p in build_cli().commands["run"].params for o in p.opts}


def test_a_command_two_plugins_add_fails_both_in_the_cases(plugin_site):
    plugin_site("thirdparty-cmd-a", "thirdparty_cmd_a", command_plugin_source("a", "own-a3p", "shared3p"))
    plugin_site("thirdparty-cmd-b", "thirdparty_cmd_b", command_plugin_source("b", "shared3p"))
    for name in ("thirdparty_cmd_a", "thirdparty_cmd_b"):
        (case,) = collect_cases(name)
        assert case.broken == ("broken: register_commands: command 'shared3p' is added by both 'thirdparty_cmd_a' "
                               "and 'thirdparty_cmd_b'"), case.broken

def test_missing_weights_skip_or_fail(rk_home):
    from restorekit.errors import WeightsMissing
    from restorekit.metrics_lpips import LPIPSAlex
    from restorekit.testing.cases import ConformanceCase

    case = ConformanceCase("restorekit", "metrics", "lpips_alex_v0.1", LPIPSAlex)
    with pytest.raises(pytest.skip.Exception, match="lpips-alex"):
        case.run()
    strict = ConformanceCase("restorekit", "metrics", "lpips_alex_v0.1", LPIPSAlex, missing_weights="fail")
    with pytest.raises(WeightsMissing, match="weights 'lpips-alex' are not available"):
        strict.run()


# The core's own components, cheap ones; LPIPS and dlib are covered by their own tests.
CORE_CONFIGS: dict[str, dict[str, Any]] = {"w_norm": {"context": {"latents": torch.randn(2, 4, 8)}}}
CORE_SKIP = {"loss:lpips": "LPIPS network load (tests/test_lpips_offline.py)",
             "metric:lpips_alex_v0.1": "LPIPS network load (tests/test_lpips_offline.py)",
             "metric:lpips_vgg_v0.1": "LPIPS network load (tests/test_lpips_offline.py)"}


def _core_params() -> list[Any]:
    plugins.reset()
    cases = collect_cases("restorekit", configs=CORE_CONFIGS)
    plugins.reset()
    out = []
    for case in cases:
        slow = "dlib" in case.name
        reason = CORE_SKIP.get(case.id) or ("dlib models (tests/test_dlib_port.py)" if slow else "")
        out.append(pytest.param(case, id=case.id, marks=[pytest.mark.skip(reason=reason)] if reason else []))
    return out


@pytest.mark.parametrize("case", _core_params())
def test_core_components_conform(case):
    case.run()


def test_a_component_that_needs_a_package_not_installed_is_skipped_not_failed(monkeypatch):
    """scrfd without insightface: DependencyMissing names the extra; the check skips it, with
    missing_weights="fail" too (that asks for weights, and no check ran), while the missing pack of
    an installed scrfd fails there. Before, only WeightsMissing skipped, so scrfd's checks passed
    only as long as the weights were asked for before the packages."""
    from restorekit.testing import cases as cases_module

    real = importlib.util.find_spec
    installed = {"insightface": None}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: installed.get(name, real(name, *a)))
    monkeypatch.setenv("RESTOREKIT_HOME", str(Path(os.environ.get("RESTOREKIT_HOME", "/nonexistent")) / "empty"))
    collect = cases_module.collect_cases
    monkeypatch.setattr(cases_module, "collect_cases", lambda *a, **k: [
        case for case in collect(*a, **k) if case.id == "face_detector:scrfd"])  # (not mtcnn, dlib_hog)

    def outcome(mode: str) -> tuple[str, str]:
        plugins.reset()
        [result] = cases_module.run_conformance("restorekit", kinds=["face_detectors"], missing_weights=mode)
        [case] = cases_module.collect_cases("restorekit", kinds=["face_detectors"], missing_weights=mode)
        try:
            case.run()
        except pytest.skip.Exception as exc:
            assert str(exc) == f"face_detector:scrfd: {result.detail}"
            return result.status, result.detail
        except Exception as exc:
            assert result.status == "failed" and result.detail == str(exc)
            return result.status, result.detail
        raise AssertionError("scrfd's check ran")

    for mode in ("skip", "fail"):
        status, detail = outcome(mode)
        assert status == "skipped" and detail.startswith("detector 'scrfd' needs insightface; pip install "), mode
    installed.update(insightface=object(), onnxruntime=object())
    status, detail = outcome("fail")
    assert status == "failed" and detail.startswith("weights 'insightface-buffalo-l' are not available: "), detail
    plugins.reset()


# -- restorekit plugin new ---------------------------------------------------------------------

def test_plugin_names_are_normalised_and_validated():
    n = plugin_names("My.Cool_SR")
    assert (n.name, n.distribution, n.module, n.entry_point, n.method) == (
        "my-cool-sr", "restorekit-my-cool-sr", "restorekit_my_cool_sr", "my_cool_sr", "my_cool_sr")
    for bad, msg in [("3d", "must start with a letter"), ("a--b", "single"), ("sharp en", "must start"),
                     ("restorekit-x", "without the 'restorekit-' prefix"), ("class", "keyword"),
                     ("x" * 41, "longer than")]:
        with pytest.raises(ValueError, match=msg):
            plugin_names(bad)


@pytest.mark.parametrize("license_id", LICENSES)
def test_plugin_new_writes_a_complete_project(tmp_path, license_id):
    r = invoke("plugin", "new", "Kit.Gen", "--dir", str(tmp_path), "--author", "Ada Lovelace <ada@example.org>",
               "--description", 'Sharpens "things"', "--license", license_id, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    root = Path(info["path"])
    assert root == tmp_path / "restorekit-kit-gen"
    assert info["files"] == sorted(["pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", ".gitignore", ".github/workflows/tests.yml",
                                    "registry/plugins/restorekit-kit-gen.toml", "tests/test_plugin.py",
                                    "src/restorekit_kit_gen/__init__.py", "src/restorekit_kit_gen/plugin.py",
                                    "src/restorekit_kit_gen/method.py", "src/restorekit_kit_gen/py.typed"])
    for rel in info["files"]:
        text = (root / rel).read_text()
        assert not PLACEHOLDER.search(text), rel
        if rel.endswith(".py"):
            ast.parse(text, rel)
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["name"] == "restorekit-kit-gen" and project["license"] == license_id
    assert project["description"] == 'Sharpens "things"'
    assert project["authors"] == [{"name": "Ada Lovelace", "email": "ada@example.org"}]
    assert project["entry-points"]["restorekit"] == {"kit_gen": "restorekit_kit_gen.plugin"}
    entry = load_entry(root / "registry/plugins/restorekit-kit-gen.toml")
    assert (entry.distribution, entry.entry_point, entry.license) == (
        "restorekit-kit-gen", "kit_gen = restorekit_kit_gen.plugin", license_id)
    lic = (root / "LICENSE").read_text()
    assert {"Apache-2.0": "Apache License", "MIT": "MIT License", "BSD-3-Clause": "BSD 3-Clause"}[license_id] in lic
    if license_id != "Apache-2.0":
        assert "Ada Lovelace" in lic
    assert 'name="kit_gen"' in (root / "src/restorekit_kit_gen/method.py").read_text()
    assert not list(tmp_path.glob(".*tmp*"))


def test_plugin_new_never_writes_through_a_link_at_its_temp_name(tmp_path):
    """The project was assembled in ``.restorekit-NAME.tmp-PID``: a link planted at that name (a
    shared --dir) had the files written wherever it pointed, over what was there."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "README.md").write_text("mine")
    parent = tmp_path / "shared"
    parent.mkdir()
    for pid in range(os.getpid() - 50, os.getpid() + 50):
        (parent / f".restorekit-baz.tmp-{pid}").symlink_to(victim)
    old = os.umask(0o027)
    try:
        r = invoke("plugin", "new", "baz", "--dir", str(parent))
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    assert [p.name for p in victim.iterdir()] == ["README.md"] and (victim / "README.md").read_text() == "mine"
    root = parent / "restorekit-baz"
    assert root.is_dir() and not root.is_symlink() and (root / "pyproject.toml").is_file()
    assert stat.S_IMODE(root.stat().st_mode) == 0o750  # a plain folder's mode under the umask, not mkdtemp's 0700
    assert len([p for p in parent.iterdir() if p.name.startswith(".")]) == 100  # only the planted links remain


def test_plugin_new_refuses_existing_folders_and_taken_names(tmp_path):
    existing = tmp_path / "restorekit-sharpen"
    existing.mkdir()
    (existing / "mine.txt").write_text("keep me")
    r = invoke("plugin", "new", "sharpen", "--dir", str(tmp_path))
    assert r.exit_code == 2 and "already exists" in r.output and "restorekit-sharpen" in r.output
    assert [p.name for p in existing.iterdir()] == ["mine.txt"]
    r = invoke("plugin", "new", "bicubic", "--dir", str(tmp_path))
    assert r.exit_code == 2 and "method 'bicubic' is already registered by plugin 'baselines'" in r.output
    r = invoke("plugin", "new", "psp-sr", "--dir", str(tmp_path))
    assert r.exit_code == 2 and "already taken by the installed distribution restorekit-psp-sr" in r.output
    r = invoke("plugin", "new", "2fast", "--dir", str(tmp_path))
    assert r.exit_code == 2 and "must start with a letter" in r.output
    r = invoke("plugin", "new", "abc\n", "--dir", str(tmp_path))  # ('$' matched before a final newline)
    assert r.exit_code == 2 and "must start with a letter" in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["restorekit-sharpen"]


def test_plugin_new_refuses_names_of_plugins_the_load_limit_leaves_out(tmp_path, monkeypatch):
    """Under RESTOREKIT_LOAD_PLUGINS= (none loaded) 'baselines' and 'bicubic' looked free: the new
    project took the first-party distribution's name, which `pip install -e .` would replace."""
    monkeypatch.setenv("RESTOREKIT_LOAD_PLUGINS", "")
    r = invoke("plugin", "new", "baselines", "--dir", str(tmp_path))
    assert r.exit_code == 2 and "already taken by the installed distribution restorekit-baselines" in r.output, \
        r.output
    r = invoke("plugin", "new", "bicubic", "--dir", str(tmp_path))
    assert r.exit_code == 2 and "method 'bicubic' is already registered by plugin 'baselines'" in r.output, r.output
    assert list(tmp_path.iterdir()) == [] and os.environ["RESTOREKIT_LOAD_PLUGINS"] == ""


def test_plugin_new_refuses_names_broken_plugins_claim(tmp_path, plugin_site):
    # Two plugins registering one method are both broken and the name is registered by nobody: it
    # used to look free, and a third plugin taking it would clash with both.
    source = GOOD_PLUGIN.replace('"mean_abs_3p"', '"mean_abs_OTHER_3p"')
    plugin_site("thirdparty-one", "thirdparty_one", source.replace("OTHER", "one"))
    plugin_site("thirdparty-two", "thirdparty_two", source.replace("OTHER", "two"))
    r = invoke("plugin", "new", "nearest3p", "--dir", str(tmp_path))
    assert r.exit_code == 2, r.output
    assert "method 'nearest3p' is already registered by plugins 'thirdparty_one' and 'thirdparty_two'" in r.output
    # A plugin name two distributions declare (listed as 'NAME (dist)', both broken).
    write_plugin_dist(tmp_path / "site2", "thirdparty-three", "thirdparty_three", source.replace("OTHER", "x"),
                      "twice3p")
    plugin_site("thirdparty-four", "thirdparty_four", source.replace("OTHER", "y"), "twice3p")
    import shutil

    for p in (tmp_path / "site2").iterdir():
        shutil.move(str(p), str(tmp_path / "site" / p.name))
    plugins.reset()
    r = invoke("plugin", "new", "twice3p", "--dir", str(tmp_path))
    assert r.exit_code == 2 and "plugin name 'twice3p' is already taken by the installed distributions " \
                                "thirdparty-four and thirdparty-three" in r.output, r.output
    assert not list(tmp_path.glob("restorekit-*"))


def test_the_generated_project_pins_the_minor_version_as_the_docs_say(tmp_path):
    from restorekit import __version__

    root, _ = write_project(plugin_names("kitpin"), tmp_path, description="d")
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    major, minor = __version__.split(".")[:2]
    pin = f"restorekit>={major}.{minor},<{major}.{int(minor) + 1}"
    assert deps[0] == pin
    docs = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    assert "pins the minor version" in docs and "restorekit>=X.Y,<X.Y+1" in docs


def _doc_snippets() -> list[str]:
    import re as _re

    docs = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    return _re.findall(r"```python\n(.*?)```", docs, flags=_re.S)


@pytest.mark.parametrize("index", range(len(_doc_snippets())))
def test_every_python_snippet_of_the_plugin_docs_runs_as_pasted(index, rk_home):
    """Each snippet is a plugin module: it imports, its hooks register through the real checks,
    and what they register passes the conformance suite's metadata checks (no NameError)."""
    import types

    import click

    from restorekit.plugins import PluginRecord, Registry, _register_plugin, add_commands

    code = _doc_snippets()[index]
    if "conformance_cases(" in code:  # a test module of an installed plugin: parse only
        ast.parse(code)
        return
    mod = types.ModuleType(f"docsnippet{index}")
    exec(compile(code, f"docs/plugins.md snippet {index}", "exec"), mod.__dict__)
    hooks = [n for n in vars(mod) if n.startswith("register_")]
    assert hooks, "a snippet with no hook"
    reg = Registry()
    _register_plugin(reg, mod, PluginRecord("tiny", "restorekit-tiny", "0.1.0"))
    for hook in hooks:  # every hook of the snippet registered something under its own kind
        kind = hook.removeprefix("register_")
        assert kind == "commands" or reg.names(kind), f"{hook} registered nothing"
        assert kind != "commands" or reg.commands, "register_commands was not collected"
    group = click.Group("t")
    add_commands(reg, group, strict=True)
    for name, spec in reg.items["weights"].items():
        from restorekit.testing import check_weight_spec

        check_weight_spec(spec, name=name, plugin="tiny")
    for cls in reg.items["methods"].values():
        check_method(cls)
    for kind, check in (("metrics", check_metric), ("degradations", check_degradation), ("losses", check_loss)):
        for cls in reg.items[kind].values():
            check(cls)
    if "register_commands" in hooks:
        assert group.commands, "the commands snippet adds a command"


def test_a_description_with_quotes_and_backslashes_is_the_modules_docstring(tmp_path):
    desc = 'a """ b, a \\ c, \\n and a last quote"'
    root, _ = write_project(plugin_names("kitquote"), tmp_path, description=desc)
    text = (root / "src/restorekit_kitquote/__init__.py").read_text()
    assert ast.get_docstring(ast.parse(text), clean=False).splitlines()[0] == desc


def test_generated_method_sharpens(tmp_path):
    """The template's method, imported straight from the generated source (no install)."""
    names = plugin_names("kitsrc")
    root, _ = write_project(names, tmp_path, description="d")
    spec = importlib.util.spec_from_file_location("kitsrc_method", root / "src/restorekit_kitsrc/method.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    x = torch.from_numpy(smooth_image(16, 16, 1)).permute(2, 0, 1)[None].float() / 255
    plain = mod.UnsharpMask(mod.UnsharpMaskOptions(amount=0.0)).restore(x, 2)
    sharp = mod.UnsharpMask(mod.UnsharpMaskOptions(amount=1.0)).restore(x, 2)
    assert torch.allclose(plain, F.interpolate(x, scale_factor=2, mode="bicubic").clamp(0, 1), atol=1e-6)
    # The mask adds exactly the detail above the blur (before clamping), so where nothing clamps:
    up = F.interpolate(x, scale_factor=2, mode="bicubic")
    expect = up + (up - mod.gaussian_blur(up, 1.0))
    inside = (expect > 0) & (expect < 1)
    assert torch.allclose(sharp[inside], expect[inside], atol=1e-6)
    assert (sharp - plain).abs().max() > 0.01
    check_method(mod.UnsharpMask)


def test_generated_readme_commands_run(tmp_path, plugin_site, hr_folder, monkeypatch):
    """The `restorekit run` and `compare` lines of the generated README work as written."""
    import re
    import shlex

    root, _ = write_project(plugin_names("kitreadme"), tmp_path, description="d")
    monkeypatch.syspath_prepend(str(root / "src"))
    plugin_site("restorekit-kitreadme", "kitreadme_3p", "from restorekit_kitreadme.plugin import *\n",
                ep_name="kitreadme")
    try:
        lines = [ln.split("#")[0].strip() for ln in (root / "README.md").read_text().splitlines()
                 if re.match(r"restorekit (run|compare) ", ln)]
        assert len(lines) == 2, lines
        for line in lines:
            args = shlex.split(line)[1:]
            paths = {"lr/": str(hr_folder), "hr/": str(hr_folder), "sr/": str(tmp_path / "sr")}
            args = [paths.get(a, a) for a in args] + ["-q"]
            if args[0] == "compare":
                args += ["--out", str(tmp_path / "cmp"), "--metrics", "psnr_rgb", "--device", "cpu"]
            r = invoke(*args)
            assert r.exit_code == 0, f"{line}\n{r.output}"
        assert len(list((tmp_path / "sr").iterdir())) == 4
    finally:
        plugins.reset()
        for name in [m for m in sys.modules if m.startswith("restorekit_kitreadme")]:
            del sys.modules[name]


# -- end to end: generate, install, its own tests, discovery, compare --------------------------

def _needs_build_tools() -> None:
    if importlib.util.find_spec("pip") is None or importlib.util.find_spec("setuptools") is None:
        pytest.skip("needs pip and setuptools in the environment")
    from importlib.metadata import version

    if int(version("setuptools").split(".")[0]) < 77:  # not imported: it patches distutils
        pytest.skip("the generated pyproject needs setuptools>=77 (SPDX license strings)")


@pytest.mark.slow
def test_generated_plugin_installs_passes_its_tests_and_joins_compare(tmp_path, monkeypatch):
    _needs_build_tools()
    r = invoke("plugin", "new", "kitdemo", "--dir", str(tmp_path), "--author", "Test Author", "--json")
    assert r.exit_code == 0, r.output
    root = Path(json.loads(r.output)["path"])
    site = tmp_path / "site"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)}
    env.pop("RESTOREKIT_LOAD_PLUGINS", None)
    env.pop("RESTOREKIT_STRICT_PLUGINS", None)
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "--target", str(site), "-q", str(root)], capture_output=True, text=True, env=env, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert (site / "restorekit_kitdemo" / "method.py").is_file() and (site / "restorekit_kitdemo" / "py.typed").is_file()
    (dist_info,) = site.glob("restorekit_kitdemo-0.1.0.dist-info")
    assert "Apache License" in next(dist_info.rglob("LICENSE")).read_text()

    # The generated project's own tests (conformance suite + rk_* fixtures from restorekit's pytest plugin).
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error::UserWarning"],
                           cwd=root, capture_output=True, text=True, env=env, timeout=300)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "7 passed" in tests.stdout, tests.stdout[-2000:]

    # A fresh `restorekit` process lists it (strict: nothing broken).
    listed = subprocess.run([sys.executable, "-m", "restorekit", "--strict", "plugins", "--json"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    rec = next(p for p in json.loads(listed.stdout) if p["name"] == "kitdemo")
    assert 0 <= rec.pop("load_seconds") < 30
    assert rec == {"name": "kitdemo", "distribution": "restorekit-kitdemo", "version": "0.1.0", "status": "ok",
                   "registers": {"methods": ["kitdemo"]}}

    # In this process: methods and compare see it too.
    monkeypatch.syspath_prepend(str(site))
    plugins.reset()
    try:
        r = invoke("methods", "--json")
        row = next(m for m in json.loads(r.output) if m["name"] == "kitdemo")
        assert (row["plugin"], row["license"], row["deterministic"]) == ("kitdemo", "Apache-2.0", True)
        data = tmp_path / "hr"
        data.mkdir()
        for i in range(2):
            Image.fromarray(smooth_image(32, 32, 10 + i)).save(data / f"im{i}.png")
        out = tmp_path / "cmp"
        r = invoke("compare", "--methods", "bicubic,kitdemo", "--scale", "2", "--data", str(data), "--out", str(out),
                   "--metrics", "psnr_rgb,lr_consistency", "--device", "cpu", "--opt", "kitdemo.amount=0.3", "-q")
        assert r.exit_code == 0, r.output
        doc = json.loads((out / "results.json").read_text())
        rows = {m["name"]: m for m in doc["methods"]}
        assert set(rows) == {"bicubic", "kitdemo"}
        assert (rows["kitdemo"]["distribution"], rows["kitdemo"]["version"]) == ("restorekit-kitdemo", "0.1.0")
        kit, bic = rows["kitdemo"]["aggregate"]["metrics"], rows["bicubic"]["aggregate"]["metrics"]
        assert 20 < kit["psnr_rgb"]["mean"] < 60 and 20 < bic["psnr_rgb"]["mean"] < 60
        # Sharpening moves the output away from what downscales back to the input.
        assert kit["lr_consistency"]["mean"] > bic["lr_consistency"]["mean"]
        assert len([img for img in doc["images"] if img["method"] == "kitdemo"]) == 2
    finally:
        plugins.reset()
        for name in [m for m in sys.modules if m.startswith("restorekit_kitdemo")]:
            del sys.modules[name]


def test_author_fixtures(rk_batch, rk_odd_batch, rk_smooth_batch, rk_face, rk_home, rk_cli):
    assert rk_batch.shape == (2, 3, 12, 10) and rk_odd_batch.shape == (1, 3, 11, 9)
    assert rk_smooth_batch.shape == (2, 3, 32, 32)
    for t in (rk_batch, rk_odd_batch, rk_smooth_batch, rk_face):
        assert t.dtype == torch.float32 and float(t.min()) >= 0 and float(t.max()) <= 1
    assert rk_face.shape == (3, 256, 256) and float(rk_face.std()) > 0.1
    assert os.environ["RESTOREKIT_HOME"] == str(rk_home) and not any(rk_home.iterdir())
    r = rk_cli("methods", "--json")
    assert r.exit_code == 0 and "bicubic" in {m["name"] for m in json.loads(r.output)}



def test_native_threads_lists_this_process_threads_by_marker():
    import threading
    import time
    from pathlib import Path

    from restorekit.testing.distributed import native_threads

    if not Path("/proc/self/task").is_dir():
        assert native_threads("python") == []
        return
    comm = Path("/proc/self/comm").read_text().strip()  # a new thread inherits the process's name
    assert native_threads(comm) and native_threads("no such thread name") == []
    # A thread with a name of its own: other threads of the test process (a server's, a pool's)
    # may start or end meanwhile, so counting the inherited name would be a race.
    named, stop = threading.Event(), threading.Event()

    def run() -> None:
        Path("/proc/thread-self/comm").write_text("rk-marker-thr")
        named.set()
        stop.wait()

    t = threading.Thread(target=run)
    t.start()
    try:
        assert named.wait(10)
        assert native_threads("rk-marker") == ["rk-marker-thr"]
    finally:
        stop.set()
        t.join()
    # join() returns as the thread's last Python step ends: the OS thread leaves /proc a moment later.
    deadline = time.monotonic() + 10
    while native_threads("rk-marker") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert native_threads("rk-marker") == []


def test_generated_plugin_sdist_carries_what_its_tests_read(tmp_path):
    """The generated project's sdist holds its tests and the registry entry they validate (MANIFEST.in),
    so its own tests pass from an unpacked sdist; and it asks for the torch restorekit needs."""
    import tarfile

    _needs_build_tools()
    r = invoke("plugin", "new", "kitsdist", "--dir", str(tmp_path), "--json")
    assert r.exit_code == 0, r.output
    root = Path(json.loads(r.output)["path"])
    assert "include registry/plugins/restorekit-kitsdist.toml" in (root / "MANIFEST.in").read_text().splitlines()
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    core = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert [d for d in deps if d.startswith("torch")] == [d for d in core["dependencies"] if d.startswith("torch>")]
    out = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-c", "import sys, setuptools.build_meta as b; "
                            "print(b.build_sdist(sys.argv[1]))", str(out)],
                           cwd=root, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (sdist,) = out.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"registry/plugins/restorekit-kitsdist.toml", "tests/test_plugin.py", "LICENSE", "README.md",
            "pyproject.toml", "src/restorekit_kitsdist/py.typed"} <= names


def test_plugin_check_refuses_an_option_value_the_method_refuses_before_any_check():
    """A value the method's options refuse is the user's: a usage error before any check (it ran
    every other check, then failed pulse's as if the plugin were at fault, exit 1)."""
    run = CliRunner().invoke
    r = run(build_cli(), ["plugin", "check", "baselines", "--opt", "pulse.steps=0"])
    assert r.exit_code == 2 and "checking" not in r.stderr, r.stderr
    assert "method 'pulse': option 'steps': Input should be greater than or equal to 1" in r.stderr, r.stderr


def test_plugin_check_takes_cheap_options_and_names_each_component_as_it_starts():
    """PULSE at its default steps made `plugin check baselines` run past 15 minutes, silently."""
    from click.testing import CliRunner

    from restorekit.cli import build_cli

    run = CliRunner().invoke
    r = run(build_cli(), ["plugin", "check", "baselines", "--opt", "pulse.steps=2",
                          "--opt", "pulse.gaussian_fit_samples=2000", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    results = {x["id"]: x for x in json.loads(r.stdout)}
    # ~60 s of PULSE calls on a shared 2-core CPU before the layout/constant-image/scale-1/seed checks, ~100 s since.
    assert results["method:pulse"]["status"] == "ok" and results["method:pulse"]["seconds"] < 240
    assert "checking method:pulse …" in r.stderr and "checking method:bicubic …" in r.stderr
    r = run(build_cli(), ["plugin", "check", "baselines", "--opt", "nope.steps=2"])
    assert r.exit_code == 2 and "plugin 'baselines' registers no component 'nope'" in r.stderr
    r = run(build_cli(), ["plugin", "check", "baselines", "--opt", "steps=2"])
    assert r.exit_code == 2 and "expected COMPONENT.KEY=VALUE" in r.stderr
