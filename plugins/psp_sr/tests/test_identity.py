"""ArcFace IR-SE50 embedder (official key layout, importer, pSp preprocessing) and the identity loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from restorekit.interfaces import FaceEmbedder
from restorekit_psp_sr import identity_loss as idl
from restorekit_psp_sr.arcface import (ArcFaceEmbedder, IRSEBackbone, official_irse_keys,
                                       prepare_faces)
from restorekit_psp_sr.identity_loss import IdentityLoss

LIGHT = "ir_se_light"


def tiny_embedder(seed: int = 0) -> ArcFaceEmbedder:
    torch.manual_seed(seed)
    emb = ArcFaceEmbedder(LIGHT, embed_dim=32)
    # Non-trivial BN statistics so the eval-mode network is not near-identity.
    for m in emb.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return emb


def random_official_state(model: IRSEBackbone, seed: int = 3) -> dict[str, torch.Tensor]:
    """Random tensors under the official TreB1eN key names (built from the layout, not the model)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    out = {}
    for key in official_irse_keys(model.cfg):
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shapes[key], generator=g) + 0.5
        else:
            out[key] = torch.randn(shapes[key], generator=g) * 0.1
    return out


def test_module_keys_are_the_official_ir_se50_keys() -> None:
    with torch.device("meta"):
        net = IRSEBackbone("ir_se50")
    sd = net.state_dict()
    official = official_irse_keys("ir_se50")
    assert list(sd) == official
    # 24 units; width changes at units 3, 7, 21 (conv shortcuts), the rest max-pool shortcuts.
    conv_shortcuts = sorted(int(k.split(".")[1]) for k in official if k.endswith("shortcut_layer.0.weight"))
    assert conv_shortcuts == [3, 7, 21]
    assert sd["output_layer.3.weight"].shape == (512, 512 * 7 * 7)
    assert sd["output_layer.4.weight"].shape == (512,)
    assert sd["body.0.res_layer.5.fc1.weight"].shape == (4, 64, 1, 1)


@pytest.mark.parametrize("variant", ["plain", "module_prefix", "no_num_batches"])
def test_importer_loads_official_names(variant: str) -> None:
    emb = tiny_embedder()
    state = random_official_state(emb.net)
    if variant == "module_prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    elif variant == "no_num_batches":
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    emb.load_official(state)
    loaded = emb.net.state_dict()
    for key, value in random_official_state(emb.net).items():
        if variant == "no_num_batches" and key.endswith("num_batches_tracked"):
            assert int(loaded[key]) == 0
        else:
            torch.testing.assert_close(loaded[key], value)


def test_importer_rejects_wrong_layouts() -> None:
    emb = tiny_embedder()
    state = random_official_state(emb.net)
    extra = dict(state, **{"output_layer.9.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="1 unexpected"):
        emb.load_official(extra)
    missing = {k: v for k, v in state.items() if k != "body.0.res_layer.1.weight"}
    with pytest.raises(ValueError, match="1 missing"):
        emb.load_official(missing)
    wrong = dict(state, **{"output_layer.3.bias": torch.zeros(7)})
    with pytest.raises(ValueError, match="wrong shapes"):
        emb.load_official(wrong)


def test_file_round_trip_is_weights_only(tmp_path: Path) -> None:
    src = tiny_embedder(1)
    path = tmp_path / "model_ir_se50.pth"
    torch.save(src.net.state_dict(), path)
    # The file's 32-d head does not fit the default 512-d model: a clear shape error.
    with pytest.raises(ValueError, match="wrong shapes"):
        ArcFaceEmbedder.from_file(path, LIGHT)
    dst = ArcFaceEmbedder(LIGHT, embed_dim=32)
    dst.load_official(torch.load(path, weights_only=True))
    x = torch.rand(2, 3, 256, 256)
    torch.testing.assert_close(dst.embed(x), src.embed(x))


def test_from_file_reads_the_official_layout(tmp_path: Path) -> None:
    ref = ArcFaceEmbedder(LIGHT)
    state = random_official_state(ref.net, seed=11)
    path = tmp_path / "model_ir_se50.pth"
    torch.save(state, path)
    emb = ArcFaceEmbedder.from_file(path, LIGHT)
    assert isinstance(emb, FaceEmbedder)
    ref.net.load_state_dict(state)
    x = torch.rand(1, 3, 256, 256)
    torch.testing.assert_close(emb.embed(x), ref.embed(x))


def test_preprocessing_is_psp_crop_and_pool() -> None:
    x = torch.rand(2, 3, 256, 256)
    expected = F.adaptive_avg_pool2d(x[:, :, 35:223, 32:220], 112) * 2 - 1
    torch.testing.assert_close(prepare_faces(x), expected)
    # 1024-px outputs are average-pooled to 256 first, as pSp's face_pool does.
    big = x.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    torch.testing.assert_close(prepare_faces(big), expected)
    assert prepare_faces(torch.rand(1, 3, 300, 300)).shape == (1, 3, 112, 112)


def test_embeddings_are_unit_vectors_and_eval_only() -> None:
    emb = tiny_embedder()
    emb.train()
    assert not emb.training and not emb.net.training
    e = emb.embed(torch.rand(3, 3, 256, 256))
    assert e.shape == (3, 32)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    # deterministic in eval (no dropout)
    x = torch.rand(1, 3, 256, 256)
    torch.testing.assert_close(emb.embed(x), emb.embed(x))


def test_identity_loss_values_and_gradients() -> None:
    emb = tiny_embedder()
    loss = IdentityLoss(weight=0.1, embedder=emb)
    assert loss.name == "identity" and loss.weight == 0.1
    torch.manual_seed(5)
    y = torch.rand(2, 3, 256, 256)
    same = loss(y.clone(), y)
    assert abs(float(same)) < 1e-5
    other = torch.rand(2, 3, 256, 256)
    pred = other.clone().requires_grad_(True)
    target = y.clone().requires_grad_(True)
    value = loss(pred, target)
    assert 0.01 < float(value.detach()) <= 2.0
    sims = loss.similarity(other, y)
    torch.testing.assert_close(value.detach(), (1 - sims).mean())
    value.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert target.grad is None  # the target's embedding is a constant
    assert all(p.grad is None and not p.requires_grad for p in emb.parameters())


def test_identity_loss_gradcheck_through_embedder() -> None:
    emb = tiny_embedder().double()
    loss = IdentityLoss(embedder=emb)
    y = torch.rand(1, 3, 256, 256, dtype=torch.float64)
    base = torch.rand(1, 3, 256, 256, dtype=torch.float64)
    # Directional derivative along a random direction, autograd vs central difference.
    d = torch.randn_like(base)
    p = base.clone().requires_grad_(True)
    loss(p, y).backward()
    analytic = float((p.grad * d).sum())
    h = 1e-7  # small: PReLU/ReLU kinks bias wider central differences
    numeric = (float(loss(base + h * d, y)) - float(loss(base - h * d, y))) / (2 * h)
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_identity_loss_builds_embedder_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict]] = []

    def fake_build(name: str, **kw: object) -> FaceEmbedder:
        calls.append((name, kw))
        return tiny_embedder()

    monkeypatch.setattr(idl, "build_embedder", fake_build)
    loss = IdentityLoss()
    assert calls == []  # lazy: nothing built at construction
    x = torch.rand(1, 3, 256, 256)
    assert abs(float(loss(x, x))) < 1e-5
    assert calls == [("dlib_resnet", {})]
    loss2 = IdentityLoss(embedder="arcface_irse50", embedder_kwargs={"weights": "w.pth"})
    loss2.embedder
    assert calls[-1] == ("arcface_irse50", {"weights": "w.pth"})


def test_identity_loss_refuses_non_differentiable_embedder() -> None:
    class Frozen(FaceEmbedder):
        name = "frozen"
        differentiable = False

        def embed(self, faces: torch.Tensor) -> torch.Tensor:
            return F.normalize(faces.flatten(1), dim=1)

    with pytest.raises(ValueError, match="not differentiable"):
        IdentityLoss(embedder=Frozen())


def test_plugin_registers_identity_loss_and_arcface(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from restorekit.errors import WeightsMissing
    from restorekit.plugins import load_registry

    monkeypatch.setenv("RESTOREKIT_LOAD_PLUGINS", "psp_sr")
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path))  # an empty weight cache
    reg = load_registry(strict=True)
    assert reg.get("losses", "identity") is IdentityLoss
    factory = reg.get("face_embedders", "arcface_irse50")
    with pytest.raises(WeightsMissing, match="ir-se50"):
        factory.build()
    # With a file in the official layout (light depth, to stay small) the factory loads it.
    state = random_official_state(IRSEBackbone(LIGHT), seed=5)
    path = tmp_path / "model_ir_se_light.pth"
    torch.save(state, path)
    emb = factory.build(weights=path, backbone=LIGHT)
    assert isinstance(emb, ArcFaceEmbedder) and emb.embed(torch.rand(1, 3, 256, 256)).shape == (1, 512)
    torch.testing.assert_close(emb.net.state_dict()["output_layer.3.weight"], state["output_layer.3.weight"])


def test_identity_loss_freezes_a_nested_net() -> None:
    class WithNet(FaceEmbedder):  # not a module itself: the network sits in `.net`, as dlib_resnet's
        name = "with_net"

        def __init__(self) -> None:
            self.net = tiny_embedder(2).net

        def embed(self, faces: torch.Tensor) -> torch.Tensor:
            return self.net(prepare_faces(faces))

    emb = WithNet()
    emb.net.train()
    loss = IdentityLoss(embedder=emb)
    pred = torch.rand(2, 3, 256, 256, requires_grad=True)
    loss(pred, torch.rand(2, 3, 256, 256)).backward()
    assert not emb.net.training
    assert all(p.grad is None and not p.requires_grad for p in emb.net.parameters())
    assert pred.grad.abs().sum() > 0


def test_identity_loss_with_dlib_resnet_on_a_real_face() -> None:
    """The offline default embedder (dlib's ResNet port) on the public-domain astronaut portrait."""
    skimage_data = pytest.importorskip("skimage.data")
    from restorekit.errors import WeightsMissing
    from restorekit.faces.identity_dlib import DlibResnetEmbedder

    emb = DlibResnetEmbedder()
    try:
        emb.net
    except WeightsMissing as exc:  # weights package not installed here; any other error is a loader bug
        pytest.skip(f"dlib_resnet unavailable: {exc}")
    img = torch.from_numpy(skimage_data.astronaut() / 255.0).permute(2, 0, 1)[None].float()
    face = img[:, :, 0:256, 120:376]  # roughly FFHQ-framed head
    loss = IdentityLoss(embedder=emb)
    assert abs(float(loss(face, face))) < 1e-5
    pred = torch.rand_like(face).requires_grad_(True)
    value = loss(pred, face)
    assert float(value.detach()) > 0.05
    value.backward()
    assert pred.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in emb.net.parameters())


def test_identity_loss_runs_dlib_resnet_where_the_predictions_are() -> None:
    """dlib_resnet is not a torch module: the loss must still move it to its inputs' device (on a
    GPU it would otherwise run on the CPU it was built for). The meta device stands in for CUDA:
    a computation left on the CPU cannot read meta tensors and raises."""
    from restorekit.faces.dlib_resnet import DlibFaceDescriptor
    from restorekit.faces.identity_dlib import DlibResnetEmbedder

    emb = DlibResnetEmbedder()
    emb._net = DlibFaceDescriptor().eval()  # random weights: only placement is checked here
    loss = IdentityLoss(embedder=emb)
    meta = torch.device("meta")
    pred = torch.empty(2, 3, 64, 64, device=meta, requires_grad=True)
    value = loss(pred, torch.empty(2, 3, 64, 64, device=meta))
    assert value.device == meta and emb.device == meta
    assert all(p.device == meta for p in emb.net.parameters())
    value.backward()
    assert pred.grad is not None and pred.grad.device == meta
    lazy = DlibResnetEmbedder()
    assert lazy.to(meta) is lazy and lazy.device == meta and lazy._net is None  # nothing loaded yet
