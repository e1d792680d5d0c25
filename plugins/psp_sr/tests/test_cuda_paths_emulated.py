"""What ``restorekit train stylegan2`` does only on a CUDA device, exercised without one.

* CUDA's autocast rules: the training step runs on *fake* CUDA tensors (``FakeTensorMode``:
  shapes, dtypes, strides and devices, no data), whose operations pass through torch's real CUDA
  autocast kernels — convolutions and matmuls to bf16, ``rsqrt``/``sum``/``softplus``… to fp32,
  rules that differ from the CPU autocast the CPU recipe trains with — while a check refuses any
  convolution, matmul, ``index_copy``/``index_put``, ``lerp``… fed two floating dtypes, as CUDA's
  kernels do. The autograd engine needs a real device, so the backward passes are left out.
* the channels-last D on real numbers: a resumed run reproduces the uninterrupted one, and the GPU
  script's fallback (no bf16, no channels-last) continues its checkpoint.
* a checkpoint holding the CUDA generators' states loads with ``weights_only`` and restores them.
* a run that diverges between two loss checks leaves its last good snapshot in place.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from restorekit.training.distributed import DistInfo
from restorekit.training.trainer import TrainingError, list_checkpoints
from restorekit_psp_sr import train_gan
from restorekit_psp_sr.train_gan import GANConfig, GANTrainer

from tiny_models import write_faces  # noqa: E402

TINY = {"resolution": 32, "style_dim": 16, "n_mlp": 2, "channels": {4: 16, 8: 16, 16: 16, 32: 8},
        "batch_size": 4, "num_threads": 1, "device": "cpu", "log_every": 2, "ckpt_every": 2,
        "snapshot_minutes": 60.0, "n_sample_grid": 4, "load_workers": 1, "r1_every": 2,
        "d_head_width": 8, "allow_random_backbone": True}


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_faces(tmp_path_factory.mktemp("faces"))


def config(faces: Path, out: Path, **kw: Any) -> GANConfig:
    return GANConfig.model_validate({**TINY, "out": str(out), "data": {"root": str(faces)}, **kw})


# -- CUDA autocast on fake CUDA tensors ---------------------------------------------------------
@pytest.fixture()
def cudnn_flags_kept() -> Iterator[None]:
    """The trainer sets cuDNN's and cuBLAS's flags on CUDA: they are put back afterwards."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved


#: Operations whose CUDA kernels take one floating dtype for all their tensors (no type promotion).
SAME_DTYPE = {"convolution", "mm", "addmm", "bmm", "baddbmm", "mv", "addmv", "dot", "vdot", "index_copy",
              "index_copy_", "index_put", "index_put_", "_index_put_impl_", "index_add", "index_add_", "scatter",
              "scatter_", "scatter_add", "scatter_add_", "lerp", "lerp_", "_foreach_lerp_", "masked_scatter",
              "masked_scatter_", "grid_sampler_2d"}


class OneFloatDtype(TorchDispatchMode):
    """Refuse a :data:`SAME_DTYPE` operation given tensors of two floating dtypes (the fake tensors'
    kernels do not always check that; CUDA's do)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func.overloadpacket.__name__ in SAME_DTYPE:
            seen: set[torch.dtype] = set()

            def walk(a: Any) -> None:
                if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dim() > 0:
                    seen.add(a.dtype)
                elif isinstance(a, (list, tuple)):
                    for x in a:
                        walk(x)

            walk(list(args) + list(kwargs.values()))
            if len(seen) > 1:
                raise RuntimeError(f"{func} given {sorted(map(str, seen))}: CUDA's kernel refuses mixed dtypes")
        return func(*args, **kwargs)


class FakeCuda:
    """A trainer on a fake ``cuda:0``: built as on CUDA (``__init__``'s CUDA branches run), then its
    networks and data turned into fake CUDA tensors with their strides; ``torch.autocast("cuda")``,
    which switches itself off where CUDA is missing, is let on (the tensors dispatch as CUDA ones)."""

    def __init__(self, cfg: GANConfig, monkeypatch: pytest.MonkeyPatch) -> None:
        from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily

        self.device = torch.device("cuda", 0)
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)

        class Models(train_gan.GANModels):
            """Built for real on the CPU, its ``.to(cuda)`` left for later: the trainer's own channels-last
            conversion then runs on real tensors (fake parameters cannot be converted in place)."""

            def to(self, *args: Any, **kwargs: Any) -> "Models":  # type: ignore[override]
                return self

        real_batch_indices = train_gan.batch_indices

        def batch_indices(*args: Any, **kwargs: Any) -> torch.Tensor:  # data-dependent (unique): real numbers
            with unset_fake_temporarily():
                return real_batch_indices(*args, **kwargs)

        self.pinned: list[tuple[torch.dtype, tuple[int, ...]]] = []
        monkeypatch.setattr(train_gan, "GANModels", Models)
        monkeypatch.setattr(train_gan, "batch_indices", batch_indices)
        monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: self.pinned.append((t.dtype, tuple(t.shape))) or t)
        t = self.trainer = GANTrainer(cfg, train_gan.training_files(cfg)[0], quiet=True,
                                      dist_info=DistInfo(device=self.device))
        with self.mode:
            t.models._apply(lambda x: self.mode.from_tensor(x).to(self.device))  # strides kept
            t.d_params = [p for p in t.D.parameters() if p.requires_grad]
            t.opt_G = torch.optim.Adam(t.G.parameters(), **t.opt_G.defaults)
            t.opt_D = torch.optim.Adam(t.d_params, **t.opt_D.defaults)
            t.load_data()
        self.d_calls: list[tuple[bool, bool, torch.dtype]] = []  # (autocast on, channels-last input, logits)
        t.D.register_forward_hook(lambda m, args, out: self.d_calls.append(
            (torch.is_autocast_enabled("cuda"), args[0].is_contiguous(memory_format=torch.channels_last), out.dtype)))
        monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)

    def conv_weights(self) -> list[torch.Tensor]:
        return [p for p in self.trainer.D.parameters() if p.ndim == 4 and p.shape[-1] > 1]


@pytest.mark.filterwarnings("ignore:Accessing the data pointer of FakeTensor")  # the weight caches' keys
def test_a_training_step_under_cuda_autocast_keeps_dtypes_devices_and_layouts_consistent(
        faces: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cudnn_flags_kept: None) -> None:
    """The whole step with StyleGAN2's D (the recipe's): batch drawing from the uint8 set held on the
    device (indices and flips pinned), style mixing, G in bf16, DiffAugment, the channels-last D, R1
    outside autocast, the EMA. The backward passes are recorded, not run."""
    from torch._subclasses.fake_tensor import FakeTensor

    backward: list[torch.dtype] = []

    def grad(outputs: torch.Tensor, inputs: torch.Tensor, **kw: Any) -> tuple[torch.Tensor]:
        assert kw.get("create_graph") and outputs.dtype == torch.float32  # R1, a second-order fp32 quantity
        return (torch.zeros_like(inputs),)

    monkeypatch.setattr(torch.Tensor, "backward", lambda t, *a, **k: backward.append(t.dtype))
    monkeypatch.setattr(torch.autograd, "grad", grad)
    fc = FakeCuda(config(faces, tmp_path / "run", r1_every=1, amp=True), monkeypatch)
    t = fc.trainer
    assert t.use_amp and t.channels_last and torch.backends.cudnn.benchmark and torch.backends.cudnn.allow_tf32
    assert isinstance(t.data, FakeTensor) and t.data.device == fc.device and t.data.dtype == torch.uint8
    assert fc.conv_weights() and all(p.device == fc.device and p.is_contiguous(memory_format=torch.channels_last)
                                     for p in fc.conv_weights())
    with fc.mode, OneFloatDtype():
        logs = t.train_step()
    # Four D passes: fake and real under autocast (bf16 logits), R1's in fp32, G's step under autocast.
    assert fc.d_calls == [(True, True, torch.bfloat16), (True, True, torch.bfloat16), (False, True, torch.float32),
                          (True, True, torch.bfloat16)]
    assert backward == [torch.float32] * 3  # D's loss, R1, G's loss
    assert sorted(map(str, fc.pinned)) == ["(torch.bool, (4,))", "(torch.int64, (4,))"]  # the indices and flips
    assert set(logs) == {"loss_d", "logit_real", "logit_fake", "real_sign", "r1", "loss_g"}
    assert all(v.dtype == torch.float32 and v.device == fc.device and v.dim() == 0 for v in logs.values())
    assert t.step == 1 and t.nimg == 4
    assert all(p.dtype == torch.float32 and p.device == fc.device for p in t.G_ema.parameters())  # the EMA in fp32


def test_the_projected_discriminator_under_cuda_autocast(faces: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        cudnn_flags_kept: None) -> None:
    """The race's other arm: frozen AlexNet, fixed projections and spectrally normalised heads (whose
    power iteration runs ``mv`` — bf16 under CUDA's autocast, not under the CPU's) on channels-last bf16."""
    fc = FakeCuda(config(faces, tmp_path / "run", d_arch="projected", amp=True), monkeypatch)
    t = fc.trainer
    assert t.channels_last and all(p.is_contiguous(memory_format=torch.channels_last) for p in fc.conv_weights())
    with fc.mode, OneFloatDtype():
        x = t.data[:4].float().div(255)
        with t._autocast():
            logits = t._d(t._d_input(x))
    assert fc.d_calls == [(True, True, torch.bfloat16)]
    assert logits.device == fc.device and logits.shape[0] == 4


def test_one_float_dtype_check_refuses_what_cuda_refuses() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True), OneFloatDtype():
        x = torch.zeros(1, 3, 8, 8, device="cuda")
        with pytest.raises(RuntimeError, match="convolution.*mixed dtypes"):
            nn.functional.conv2d(x, torch.zeros(4, 3, 3, 3, device="cuda", dtype=torch.bfloat16))
        with pytest.raises(RuntimeError, match="index_copy.*mixed dtypes"):
            torch.zeros(4, device="cuda").index_copy(0, torch.zeros(1, dtype=torch.long, device="cuda"),
                                                     torch.ones(1, device="cuda", dtype=torch.bfloat16))


# -- real numbers on the CPU -------------------------------------------------------------------
def test_a_resumed_channels_last_run_reproduces_the_uninterrupted_one(faces: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """D's weights, Adam's moments and inputs channels-last, as on CUDA, with real numbers."""
    monkeypatch.setattr(train_gan, "uses_channels_last", lambda device, cfg: cfg.channels_last)
    kw = {"steps": 3}  # R1 at steps 0 and 2: before and after the resume
    whole = GANTrainer.build(config(faces, tmp_path / "a", **kw), quiet=True)
    assert whole.channels_last
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in whole.D.parameters() if p.ndim == 4)
    whole.fit()
    part = GANTrainer.build(config(faces, tmp_path / "b", **kw), quiet=True)
    assert part.fit(until=1)["step"] == 1
    again = GANTrainer.build(config(faces, tmp_path / "b", **kw), quiet=True)
    assert again.fit(resume=True)["finished"]
    for name in ("G", "D", "G_ema"):
        a, b = getattr(whole, name).state_dict(), getattr(again, name).state_dict()
        assert not [k for k in a if not torch.equal(a[k], b[k])], name
    assert all(torch.isfinite(torch.tensor(v)) for v in whole.last_logs.values())
    # The GPU script's fallback continues such a checkpoint without bf16 and channels-last (Adam's
    # moments of D keep the checkpoint's layout).
    plain = GANTrainer.build(config(faces, tmp_path / "b", steps=4, amp=False, channels_last=False), quiet=True)
    assert not plain.channels_last and plain.fit(resume=True)["step"] == 4
    assert all(torch.isfinite(torch.tensor(v)) for v in plain.last_logs.values())


def test_a_checkpoint_keeps_the_cuda_generators_states_and_resume_restores_them(
        faces: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``rng_state`` on a CUDA machine: ``torch.cuda.get_rng_state_all()``'s byte tensors (one a device,
    on the CPU) travel in the checkpoint, which still loads with ``weights_only``, and ``--resume`` gives
    them back to ``torch.cuda.set_rng_state``, each to its device, as they were."""
    t = GANTrainer.build(config(faces, tmp_path / "run", steps=3), quiet=True)
    t.fit(until=1)
    again = GANTrainer.build(config(faces, tmp_path / "run", steps=3), quiet=True)
    states = [torch.randint(0, 256, (16,), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
              for i in range(2)]
    restored: dict[int, torch.Tensor] = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda new, device: restored.setdefault(device, new))
    assert t.save_checkpoint() is not None  # over the step-1 checkpoint, now with the CUDA states
    assert again.resume() == 1
    assert sorted(restored) == [0, 1]
    for device, want in enumerate(states):
        got = restored[device]
        assert got.device.type == "cpu" and got.dtype == torch.uint8 and torch.equal(got, want)


def test_a_run_diverging_between_loss_checks_keeps_its_last_good_snapshot(faces: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    # A snapshot after every step, the losses checked every 4: the weights go bad at step 3.
    t = GANTrainer.build(config(faces, tmp_path / "run", steps=8, log_every=4, ckpt_every=2,
                                snapshot_minutes=1e-9), quiet=True)
    step = t.train_step

    def diverging() -> dict[str, torch.Tensor]:
        logs = step()
        if t.step == 3:
            with torch.no_grad():
                next(iter(t.G.parameters())).fill_(float("nan"))
        return logs

    monkeypatch.setattr(t, "train_step", diverging)
    with pytest.raises(TrainingError, match=r"step 3: the weights of G are not finite .* no snapshot written, "
                                            r"what .*snapshot holds is kept"):
        t.fit()
    snap = tmp_path / "run" / "snapshot"
    records = [json.loads(ln) for ln in (snap / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for name in ("generator.safetensors", "resume_g.safetensors", "resume_d.safetensors"):
        assert all(torch.isfinite(v).all() for v in load_file(str(snap / name)).values()), name
    # Nor is a checkpoint written over the last one (a time limit may end a run between two checks).
    with pytest.raises(TrainingError, match="step 3: the weights of G are not finite .* no checkpoint written"):
        t.save_checkpoint()
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]
