"""safetensors files whose bytes follow from their contents alone.

safetensors writes the header's ``__metadata__`` entries in the order of a Rust ``HashMap`` seeded
at random for every map (huggingface/safetensors#584): the same tensors and metadata give other
bytes, and another sha256, from one call to the next. The tensor entries are in a fixed order
(by dtype, then name) and keep it. :func:`canonical_header` rewrites the header with the metadata
keys sorted and everything else as safetensors wrote it: the header keeps its length (a JSON
object's entries only change places), so the tensor data and its offsets stay where they are, and
a file whose metadata safetensors happened to write sorted is returned byte for byte.

Every restorekit write site goes through :func:`safetensors_bytes` (the file's bytes, for an
atomic write) or :func:`sort_metadata_in_place` (a file just written with ``save_file``, before it
is moved into place). Imports nothing from restorekit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

__all__ = ["canonical_header", "safetensors_bytes", "sort_metadata_in_place"]

_LEN = 8  # the header's length: an unsigned 64-bit little-endian integer before it


def _sorted_header(header: bytes, where: str) -> bytes:
    """``header`` (the JSON text with its padding) with the ``__metadata__`` keys sorted, the same length."""
    try:
        obj = json.loads(header)
    except ValueError as exc:
        raise ValueError(f"{where}: the safetensors header is not JSON ({exc})") from None
    meta = obj.get("__metadata__") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or len(meta) < 2:
        return header
    obj["__metadata__"] = dict(sorted(meta.items()))
    # Compact, non-ASCII as UTF-8 and control characters escaped: serde_json's output, as safetensors writes it.
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (len(header) - len(text))
    if len(text) != len(header):
        raise ValueError(f"{where}: the safetensors header would change length when its metadata is sorted")
    return text


def canonical_header(blob: bytes, *, where: str = "safetensors data") -> bytes:
    """``blob`` (a safetensors file's bytes) with its ``__metadata__`` keys in sorted order;
    the tensors, their order and offsets, and the header's length are unchanged."""
    if len(blob) < _LEN:
        raise ValueError(f"{where}: too short for a safetensors file ({len(blob)} bytes)")
    n = int.from_bytes(blob[:_LEN], "little")
    if n > len(blob) - _LEN:
        raise ValueError(f"{where}: the safetensors header claims {n} bytes, the data holds {len(blob) - _LEN}")
    header = blob[_LEN:_LEN + n]
    fixed = _sorted_header(header, where)
    return blob if fixed == header else blob[:_LEN] + fixed + blob[_LEN + n:]


def safetensors_bytes(tensors: Mapping[str, Tensor | np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> bytes:
    """The bytes ``save_file(tensors, …, metadata=metadata)`` writes, with the metadata keys
    sorted: the same for the same tensors and metadata in every process. ``tensors``: torch
    tensors, or numpy arrays (all of them; then torch is not imported)."""
    import numpy as np

    meta = dict(metadata) if metadata is not None else None
    arrays = {k: v for k, v in tensors.items() if isinstance(v, np.ndarray)}
    others = {k: v for k, v in tensors.items() if not isinstance(v, np.ndarray)}
    if arrays and others:
        raise ValueError(f"safetensors_bytes: torch tensors ({next(iter(others))!r}…) and numpy arrays "
                         f"({next(iter(arrays))!r}…) mixed; pass one kind")
    if arrays:
        from safetensors.numpy import save as save_arrays

        return canonical_header(save_arrays(arrays, metadata=meta))
    from safetensors.torch import save

    return canonical_header(save(others, metadata=meta))


def sort_metadata_in_place(path: str | os.PathLike[str]) -> None:
    """Sort the ``__metadata__`` keys of the safetensors file at ``path`` (one just written, not
    yet in place) by rewriting its header where it is; the tensor data is not read."""
    with open(path, "r+b") as f:
        head = f.read(_LEN)
        if len(head) < _LEN:
            raise ValueError(f"{os.fspath(path)}: too short for a safetensors file")
        n = int.from_bytes(head, "little")
        header = f.read(n)
        if len(header) != n:
            raise ValueError(f"{os.fspath(path)}: the safetensors header claims {n} bytes, the file is shorter")
        fixed = _sorted_header(header, os.fspath(path))
        if fixed != header:
            f.seek(_LEN)
            f.write(fixed)
