"""Weights caches filled by earlier restorekit versions, built by hand as they were written: a
manifest without the fields added since (mtime_ns, trusted), a cache from before trust-on-first-use
records, a file the registry has re-shipped since. Each is used only as far as it is still the file
the registry (or the first use) pins; otherwise one line naming the fix."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest
import torch

from restorekit import weights as W
from restorekit.errors import IntegrityError


@pytest.fixture
def specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, W.WeightSpec]:
    monkeypatch.setenv("RESTOREKIT_HOME", str(tmp_path / "home"))
    table: dict[str, W.WeightSpec] = {}
    monkeypatch.setattr(W, "registry_specs",
                        lambda: {n: (s, Path(f"registry/weights/{n}.toml")) for n, s in table.items()})
    monkeypatch.setattr(W, "plugin_specs", lambda: {})
    return table


def _spec(name: str, data: bytes | None) -> W.WeightSpec:
    wf = {"filename": f"{name}.pt", "urls": ()}
    if data is not None:
        wf.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    return W.WeightSpec(name=name, architecture="toy", plugin="tests", files=[wf], license="MIT")


def _old_cache(name: str, data: bytes, **extra: object) -> Path:
    """``<cache>/weights/<name>/`` as the first cache wrote it: the file and a manifest whose
    records have filename, sha256, size, source, license and time only."""
    folder = W.weights_dir(name)
    folder.mkdir(parents=True)
    (folder / f"{name}.pt").write_bytes(data)
    rec = {"filename": f"{name}.pt", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
           "source": "https://example.org/x.pt", "license": "MIT", "time": "2026-11-28T10:00:00Z", **extra}
    (folder / "manifest.json").write_text(json.dumps({"name": name, "files": {f"{name}.pt": rec}}, indent=2))
    return folder / f"{name}.pt"


def _pt(fill: float) -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.full((64,), float(fill))}, buf)
    return buf.getvalue()


def test_a_manifest_without_mtime_is_checked_by_hash_on_every_use(specs) -> None:
    """No recorded mtime: the cheap check cannot vouch for the file, so it hashes it — a changed
    byte behind an unchanged size and mtime is still found."""
    blob = b"opaque weights\n" + bytes(range(256)) * 40
    specs["toy"] = _spec("toy", blob)
    path = _old_cache("toy", blob)
    assert W.resolve("toy") == path
    st = path.stat()
    bad = bytearray(blob)
    bad[1000] ^= 0x01
    path.write_bytes(bytes(bad))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(IntegrityError, match="modified or corrupted"):
        W.resolve("toy")


def test_weights_the_registry_has_since_reshipped_are_refused_naming_rm(specs) -> None:
    old = b"opaque weights v1\n" * 50
    new = b"opaque weights v2\n" * 50
    specs["toy"] = _spec("toy", new)
    _old_cache("toy", old)
    with pytest.raises(IntegrityError) as info:
        W.resolve("toy")
    msg = str(info.value)
    assert "\n" not in msg and "restorekit weights rm toy" in msg


def test_a_trusted_file_of_a_cache_from_before_first_use_records_counts_as_the_first_use(specs, tmp_path) -> None:
    """An unpinned file a cache took on --trust before trust-on-first-use.json existed: another
    file under that name is refused, the one recorded is accepted."""
    first = _pt(1.0)
    specs["unpinned"] = _spec("unpinned", None)
    _old_cache("unpinned", first, trusted=True)
    assert not (W.cache_dir() / "trust-on-first-use.json").exists()
    other = tmp_path / "other.pt"
    other.write_bytes(_pt(2.0))
    with pytest.raises(IntegrityError, match="trust on first use"):
        W.import_file("unpinned", other, trust=True)
    same = tmp_path / "same.pt"
    same.write_bytes(first)
    W.import_file("unpinned", same)


def test_a_manifest_of_another_shape_is_one_line(specs) -> None:
    blob = b"opaque weights\n" * 10
    specs["toy"] = _spec("toy", blob)
    _old_cache("toy", blob, written_by="a later restorekit")
    with pytest.raises(IntegrityError) as info:
        W.resolve("toy")
    assert "\n" not in str(info.value) and "manifest" in str(info.value) and "weights rm" in str(info.value)
