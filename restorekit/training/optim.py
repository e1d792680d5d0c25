"""Optimizers for training: Adam, and Ranger (RAdam + Lookahead + gradient centralization).

Ranger is what pSp trains with. Here it is ``torch.optim.RAdam`` wrapped in :class:`Lookahead`
(Zhang et al. 2019: every ``k`` inner steps the slow weights move ``alpha`` of the way to the
fast ones and the fast weights restart from there), with gradient centralization (Yong et al.
2020: each gradient of a tensor with more than one dimension has its mean over all but the
first dimension removed) applied before the inner step, as pSp's Ranger does. The defaults are
pSp's: betas (0.95, 0.999), eps 1e-5, k = 6, alpha = 0.5.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


class Lookahead:
    """Lookahead around any optimizer; exposes ``param_groups`` so schedulers and scalers work.

    The slow weights are copies of the parameters at construction; after every ``k``-th call to
    :meth:`step`, ``slow += alpha·(fast − slow)`` and ``fast = slow``. State dicts hold only
    tensors and numbers (``weights_only`` loadable).
    """

    def __init__(self, base: torch.optim.Optimizer, k: int = 6, alpha: float = 0.5,
                 grad_centralization: bool = False) -> None:
        if k < 1:
            raise ValueError(f"lookahead k must be >= 1; got {k}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"lookahead alpha must be in [0, 1]; got {alpha}")
        self.base = base
        self.k = k
        self.alpha = alpha
        self.grad_centralization = grad_centralization
        self.counter = 0
        self.slow: list[Tensor] = [p.detach().clone() for p in self._params()]

    # -- the torch.optim.Optimizer surface used by trainers, schedulers and GradScaler ---------
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base.param_groups

    @property
    def defaults(self) -> dict[str, Any]:
        return self.base.defaults

    @property
    def state(self) -> Any:
        return self.base.state

    def _params(self) -> list[Tensor]:
        return [p for g in self.base.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if self.grad_centralization:
            for p in self._params():
                if p.grad is not None and p.grad.dim() > 1:
                    p.grad.sub_(p.grad.mean(dim=tuple(range(1, p.grad.dim())), keepdim=True))
        loss = self.base.step(closure)
        self.counter += 1
        if self.counter % self.k == 0:
            for p, s in zip(self._params(), self.slow):
                s.add_(p.detach() - s, alpha=self.alpha)
                p.copy_(s)
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict(), "slow": [s.clone() for s in self.slow],
                "counter": self.counter, "k": self.k, "alpha": self.alpha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state["base"])
        slow = state["slow"]
        if len(slow) != len(self.slow):
            raise ValueError(f"lookahead state has {len(slow)} slow tensors; the optimizer has {len(self.slow)}")
        for mine, theirs in zip(self.slow, slow):
            mine.copy_(theirs)
        self.counter = int(state["counter"])

    def __repr__(self) -> str:
        return f"Lookahead(k={self.k}, alpha={self.alpha}, gc={self.grad_centralization}, base={self.base!r})"


def ranger(params: Iterable[Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.95, 0.999),
           eps: float = 1e-5, weight_decay: float = 0.0, k: int = 6, alpha: float = 0.5,
           grad_centralization: bool = True) -> Lookahead:
    """Ranger as pSp uses it: RAdam + Lookahead(k, alpha) + gradient centralization."""
    base = torch.optim.RAdam(list(params), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    return Lookahead(base, k=k, alpha=alpha, grad_centralization=grad_centralization)


def build_optimizer(params: Iterable[Tensor], config: Any) -> torch.optim.Optimizer | Lookahead:
    """The optimizer a :class:`~restorekit.training.config.TrainConfig` names."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=config.betas or (0.9, 0.999),
                                eps=config.eps or 1e-8, weight_decay=config.weight_decay)
    if config.optimizer == "ranger":
        return ranger(params, lr=config.lr, betas=config.betas or (0.95, 0.999), eps=config.eps or 1e-5,
                      weight_decay=config.weight_decay, k=config.lookahead_k, alpha=config.lookahead_alpha,
                      grad_centralization=config.grad_centralization)
    raise ValueError(f"unknown optimizer '{config.optimizer}'; known: adam, ranger")
