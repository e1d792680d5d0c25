"""First-use costs and library deprecations: latent search without torch._dynamo, safetensors
loads that keep nothing behind, and plugin distributions read without deprecated metadata access."""

from __future__ import annotations

import email.message
import gc
import importlib.metadata
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from restorekit.entry_points import _dist_key, dist_field, dist_label
from restorekit.optim.latent import LatentAdam, SphericalOptimizer, lr_factor, project_to_sphere
from restorekit.plugins import is_first_party, unmet_core_requirement
from restorekit.weights.load import read_checkpoint, read_safetensors


# -- latent search: torch's Adam update without torch.optim.Optimizer ------------------------------
def _objective(x: torch.Tensor, noise: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (x - target).pow(2).sum() + torch.sin(3 * x).sum() + noise.pow(3).sum()


def test_latent_adam_is_torch_adam_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(0)
    x0, noise0, target = torch.randn(2, 4, 16, generator=g), torch.randn(2, 1, 5, 5, generator=g), \
        torch.randn(2, 4, 16, generator=g)
    ours = [x0.clone().requires_grad_(True), noise0.clone().requires_grad_(True)]
    theirs = [x0.clone().requires_grad_(True), noise0.clone().requires_grad_(True)]
    mine = LatentAdam(ours, lr=0.3)
    ref = torch.optim.Adam(theirs, lr=0.3)
    sched = torch.optim.lr_scheduler.LambdaLR(ref, lambda s: lr_factor("linear1cycledrop", s, 100))
    for step in range(100):
        for params, opt in ((ours, mine), (theirs, ref)):
            opt.zero_grad(set_to_none=True)
            loss = _objective(params[0], params[1], target)
            if step % 7 == 3:  # a step where the noise has no gradient: skipped, its moments untouched
                loss = (params[0] - target).pow(2).sum()
            loss.backward()
        mine.lr = 0.3 * lr_factor("linear1cycledrop", step, 100)
        mine.step()
        ref.step()
        sched.step()
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1]), step
    assert (ours[0] - x0).abs().max() > 0.5  # it moved
    assert torch.equal(mine.state[1]["exp_avg_sq"], ref.state[theirs[1]]["exp_avg_sq"])
    assert float(mine.state[0]["step"]) == float(ref.state[theirs[0]]["step"]) == 100.0


def test_spherical_optimizer_schedules_as_lambdalr() -> None:
    g = torch.Generator().manual_seed(1)
    start, target = project_to_sphere(torch.randn(3, 2, 8, generator=g), 2.0), torch.randn(3, 2, 8, generator=g)
    a, b = start.clone().requires_grad_(True), start.clone().requires_grad_(True)
    ours = SphericalOptimizer([a], 0.5, optimizer=LatentAdam, lr_lambda=lambda s: lr_factor("linear1cycle", s, 30))
    ref = SphericalOptimizer([b], 0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(ref.opt, lambda s: lr_factor("linear1cycle", s, 30))
    for _ in range(30):
        for p, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            (p - target).pow(2).sum().backward()
            opt.step()
        sched.step()
        assert torch.equal(a, b)
    torch.testing.assert_close(a.detach().norm(dim=-1), torch.full((3, 2), 2.0))
    with pytest.raises(ValueError, match="invalid learning rate"):
        LatentAdam([a], lr=-1.0)


_NO_DYNAMO = """
import json, sys
import torch
from restorekit.optim.latent import LatentAdam, SphericalOptimizer, lr_factor
from restorekit_psp_sr.psp_pulse import search_w_plus

class Decoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 3 * 8 * 8)
    def synthesize(self, w, noise=None):
        return torch.sigmoid(self.lin(w.mean(1))).view(-1, 3, 8, 8)
    def noise_buffers(self):
        return []

torch.manual_seed(0)
r = search_w_plus(Decoder(), torch.rand(1, 3, 4, 4), torch.randn(1, 4, 8), torch.ones(8), out_size=(8, 8), steps=3,
                  eps=0.0, learning_rate=0.1, schedule="linear1cycledrop")
x = torch.randn(2, 3, 8, requires_grad=True)
opt = SphericalOptimizer([x], 0.1, optimizer=LatentAdam, lr_lambda=lambda s: lr_factor("fixed", s, 3))
for _ in range(3):
    opt.zero_grad()
    x.pow(3).sum().backward()
    opt.step()
print(json.dumps({"steps": r.steps, "loaded": [m for m in ("torch._dynamo", "sympy") if m in sys.modules]}))
"""


def test_latent_search_does_not_import_torch_dynamo() -> None:
    # torch.optim.Optimizer imports torch._dynamo (and sympy) on construction: seconds of a CPU process.
    r = subprocess.run([sys.executable, "-c", _NO_DYNAMO], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"steps": [3], "loaded": []}


# -- safetensors: a load keeps nothing behind ----------------------------------------------------------
def _rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_safetensors_loads_keep_no_memory_or_mapping(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "many.safetensors"
    save_file({f"t{i}": torch.full((4,), float(i)) for i in range(256)}, str(path), metadata={"format": "x"})
    tensors, meta = read_safetensors(path)
    assert meta == {"format": "x"} and len(tensors) == 256 and torch.equal(tensors["t7"], torch.full((4,), 7.0))
    with open("/proc/self/maps") as f:  # the tensors own their memory: the file is not mapped while they live
        assert str(path) not in f.read()
    del tensors
    for _ in range(5):
        read_checkpoint(path)
    before = _rss()
    for _ in range(120):
        read_checkpoint(path)
    grown = _rss() - before
    # safetensors' default mmap backend kept ~64 bytes a tensor per load for good (1.9 MiB here).
    assert grown < 3 << 18, f"RSS grew by {grown / 2**20:.2f} MiB over 120 loads"


# -- plugin distributions: core metadata read without deprecated access -------------------------------
class _StrictMessage(email.message.Message):
    """Metadata as later importlib.metadata releases give it: a missing field is a KeyError (Python
    3.12–3.13 warn ``Implicit None on return values is deprecated``)."""

    def __getitem__(self, name: str) -> Any:
        value = super().__getitem__(name)
        if value is None:
            raise KeyError(name)
        return value


class _NamelessDist(importlib.metadata.Distribution):
    def read_text(self, filename: str) -> str | None:
        return None

    def locate_file(self, path: Any) -> Path:
        return Path(str(path))

    @property
    def metadata(self) -> Any:  # type: ignore[override]
        m = _StrictMessage()
        m["Metadata-Version"] = "2.1"
        m["Version"] = "0.1"
        m["Requires-Dist"] = "restorekit>=99"
        return m


def test_a_distribution_without_a_name_is_read_without_deprecated_access(tmp_path: Path) -> None:
    dist = _NamelessDist()
    assert dist_field(dist, "Name") is None and dist_field(dist, "Version") == "0.1"
    assert dist_label(dist) == "?" and is_first_party(dist) is False and _dist_key(dist) == ""
    assert unmet_core_requirement(dist, "0.1.0") == (
        "requires restorekit>=99, but restorekit 0.1.0 is installed (upgrade restorekit, or install a release of "
        "? made for this one)")
    # An installed one on disk, under the warnings filter Python 3.12+ would trip.
    info = tmp_path / "thirdparty_noname-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nVersion: 0.1\n")
    on_disk = importlib.metadata.PathDistribution(info)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert dist_label(on_disk) == f"the distribution at {info}" and is_first_party(on_disk) is False
        assert _dist_key(on_disk) == "thirdparty-noname" and dist_field(on_disk, "Version") == "0.1"
