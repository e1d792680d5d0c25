"""Contracts the annotations state, held at run time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load as load_arrays
from safetensors.torch import load as load_tensors

from restorekit.weights.st_bytes import safetensors_bytes


def test_safetensors_bytes_takes_all_torch_or_all_numpy() -> None:
    t = {"b": torch.arange(3, dtype=torch.float32), "a": torch.ones(2, 2)}
    a = {k: v.numpy() for k, v in t.items()}
    from_torch, from_numpy = safetensors_bytes(t, {"k": "v"}), safetensors_bytes(a, {"k": "v"})
    assert from_torch == from_numpy  # the same file either way
    assert torch.equal(load_tensors(from_torch)["b"], t["b"])
    np.testing.assert_array_equal(load_arrays(from_numpy)["a"], a["a"])
    assert load_tensors(safetensors_bytes({})) == {}


def test_safetensors_bytes_refuses_a_mix_naming_one_of_each() -> None:
    with pytest.raises(ValueError, match=r"^safetensors_bytes: torch tensors \('t'…\) and numpy arrays \('n'…\) "
                                         r"mixed; pass one kind$"):
        safetensors_bytes({"t": torch.zeros(2), "n": np.zeros(2, np.float32)})
