"""Identity loss: ``1 − cos(R(y), R(ŷ))`` averaged over the batch, for any face embedder ``R``.

pSp trains with ArcFace IR-SE50 (``arcface_irse50``); restorekit's offline default is the dlib
ResNet port (``dlib_resnet``), since ArcFace weights do not ship in any package. The embedder is
frozen: eval mode, its parameters never require grad, the target's embedding is computed without
a graph, and gradients flow only to the prediction.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from restorekit.interfaces import FaceEmbedder, Loss

DEFAULT_EMBEDDER = "dlib_resnet"


def build_embedder(name: str, **kwargs: Any) -> FaceEmbedder:
    """Build a registered face embedder by name (``restorekit.plugins`` registry)."""
    from restorekit.plugins import registry

    factory = registry().get("face_embedders", name)
    embedder = factory.build(**kwargs)
    if not isinstance(embedder, FaceEmbedder):
        raise TypeError(f"face embedder '{name}' built a {type(embedder).__name__}, not a FaceEmbedder")
    return embedder


def _modules_of(embedder: FaceEmbedder) -> list[torch.nn.Module]:
    """The torch modules an embedder computes with: itself, or its ``net`` (built on access)."""
    if isinstance(embedder, torch.nn.Module):
        return [embedder]
    net = getattr(embedder, "net", None)  # e.g. dlib_resnet keeps a lazily loaded network here
    return [net] if isinstance(net, torch.nn.Module) else []


def freeze(embedder: FaceEmbedder) -> FaceEmbedder:
    """Put the embedder's torch modules in eval mode and stop grads to their parameters."""
    for module in _modules_of(embedder):
        module.eval()
        module.requires_grad_(False)
    return embedder


class IdentityLoss(Loss):
    """``mean(1 − ⟨R(pred), R(target)⟩)`` with unit embeddings from a frozen embedder ``R``.

    ``embedder``: a :class:`FaceEmbedder` instance, or a registry name built on first use
    (default :data:`DEFAULT_EMBEDDER`); ``embedder_kwargs`` go to its factory.
    """

    name: ClassVar[str] = "identity"

    def __init__(self, weight: float = 1.0, embedder: FaceEmbedder | str | None = None,
                 embedder_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(weight)
        self._spec = DEFAULT_EMBEDDER if embedder is None else embedder
        self._kwargs = dict(embedder_kwargs or {})
        self._embedder: FaceEmbedder | None = None
        self._frozen = False
        if isinstance(self._spec, FaceEmbedder):
            self._embedder = self._check(self._spec)

    @staticmethod
    def _check(embedder: FaceEmbedder) -> FaceEmbedder:
        if not embedder.differentiable:
            raise ValueError(f"face embedder '{embedder.name}' is not differentiable; the identity loss needs one")
        return embedder

    @property
    def embedder(self) -> FaceEmbedder:
        """The embedder, built from the registry on first access when given by name."""
        if self._embedder is None:
            assert isinstance(self._spec, str)
            self._embedder = self._check(build_embedder(self._spec, **self._kwargs))
        return self._embedder

    def _on(self, device: torch.device) -> FaceEmbedder:
        """The embedder, frozen on first use (loading lazy networks) and, if a module, on ``device``."""
        emb = self.embedder
        if not self._frozen:
            freeze(emb)
            self._frozen = True
        if isinstance(emb, torch.nn.Module):
            p = next(emb.parameters(), None)
            if p is not None and p.device != device:
                emb.to(device)
        elif callable(getattr(emb, "to", None)):  # e.g. dlib_resnet: not a module, but device-aware
            emb.to(device)
        return emb

    def similarity(self, pred: Tensor, target: Tensor) -> Tensor:
        """Per-image cosine similarity ``N`` between ``pred`` and ``target`` embeddings."""
        emb = self._on(pred.device)
        with torch.no_grad():
            t = emb.embed(target)
        return (emb.embed(pred) * t).sum(dim=1)

    def __call__(self, pred: Tensor, target: Tensor, **context: Any) -> Tensor:
        """Scalar ``mean(1 − cos)`` for ``pred``/``target`` (``N×3×H×W`` FFHQ-framed faces in [0, 1])."""
        if pred.shape[0] != target.shape[0]:
            raise ValueError(f"identity loss: {pred.shape[0]} predictions for {target.shape[0]} targets")
        return (1 - self.similarity(pred, target)).mean()
