"""Folders below a shared output folder that another local user swaps for symbolic links.

Whoever can write a lab's group ``--out`` can replace ``outputs/<method>/``, ``inputs/<hash>/``,
``outputs/`` or ``results/`` with a link to a folder of the user's, between runs or mid-run:
compare then wrote its PNGs and manifests into that folder, ``--fresh`` removed files there
(``thesis.tex`` in the case below), and the sweep of leftover temp files swept it. ``run`` removed,
when stopped early, an empty folder a link planted in a shared parent led to. Each is refused now
in one line naming the folder (the ``--out`` folder itself and its parents are the user's choice
and may be links), and writes walk from the root by open folder, so a swap midway is not followed.

A link the user owns is the user's own setup (``outputs -> /bigdisk/...``) and is followed; the links
these tests plant are made by this very process, so each test runs as if it were another user
(``os.geteuid`` patched) unless marked ``own_links``. Each runs twice: by open folder descriptor and
by name (``DIR_FDS`` off, as on Windows), but for those that only the descriptors can pass.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from restorekit import safe_open
from restorekit.cli import build_cli
from restorekit.errors import FileSystemError
from link_owners import as_another_user, own_links  # noqa: F401 (fixtures)

if not getattr(os, "O_NOFOLLOW", 0) or not hasattr(os, "symlink") or not hasattr(os, "geteuid"):
    pytest.skip("needs O_NOFOLLOW, symbolic links and user ids (POSIX)", allow_module_level=True)

REFUSAL = "is a symbolic link; restorekit does not write through links in an output folder that another user owns"


@pytest.fixture()
def descriptors_only() -> None:
    """Asked for by a test that only folder descriptors can pass (a swap midway: by name, it is followed)."""


@pytest.fixture(autouse=True, params=[True, False], ids=["dir_fds", "by_name"])
def dir_fds(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Folders walked by open descriptor (POSIX), then by name (``safe_open.DIR_FDS`` off, as on Windows)."""
    if request.param and not safe_open.DIR_FDS:
        pytest.skip("no folder descriptors here")
    if not request.param and "descriptors_only" in request.fixturenames:
        pytest.skip("caught only by folder descriptors")
    monkeypatch.setattr(safe_open, "DIR_FDS", request.param)
    return request.param




OLD_TEMP = ".keep.png.abcd1234.part"  # the shape of restorekit's temp files: a sweep takes it for one


def invoke(*args: object):
    return CliRunner().invoke(build_cli(), [str(a) for a in args])


def compare(data: Path, out: Path, *extra: object):
    return invoke("compare", "--methods", "bicubic", "--scale", 4, "--data", data, "--out", out,
                  "--metrics", "psnr_rgb", "--device", "cpu", "-q", *extra)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (links not followed) with its bytes: what must stay as it is."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def victim_folder(tmp_path: Path, *names: str) -> Path:
    """A folder of the user's outside --out, holding ``names`` (and an old file named like a temp file)."""
    v = tmp_path / "victim"
    for name in (*names, OLD_TEMP):
        (v / name).parent.mkdir(parents=True, exist_ok=True)
        (v / name).write_text(f"the user's {name}\n")
    hour_ago = time.time() - 3600
    for p in v.rglob(OLD_TEMP):
        os.utime(p, (hour_ago, hour_ago))
    return v


def plant(out: Path, rel: str, target: Path) -> Path:
    """``out/rel`` replaced by a link to ``target`` (what was there moved aside, as an attacker would)."""
    link = out / rel
    if link.exists():
        link.rename(out / f"moved-{rel.replace('/', '-')}")
    link.symlink_to(target, target_is_directory=True)
    return link


def one_error_naming(output: str, link: Path) -> bool:
    errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
    return len(errors) == 1 and f"{link} {REFUSAL}" in errors[0]


# -- compare: a link planted between runs --------------------------------------------------------
@pytest.mark.parametrize("rel", ["outputs/bicubic", "inputs/<lr>", "outputs", "results"])
def test_compare_writes_nothing_through_a_folder_linked_between_runs(hr_folder, tmp_path, rel):
    out = tmp_path / "out"
    assert compare(hr_folder, out).exit_code == 0
    if rel == "inputs/<lr>":
        rel = f"inputs/{next((out / 'inputs').iterdir()).name}"
    victim = victim_folder(tmp_path, "mine.txt", "bicubic/mine.txt")
    before = snapshot(victim)
    link = plant(out, rel, victim)
    r = compare(hr_folder, out)  # (its outputs are not in the linked folder: they would be written again)
    assert snapshot(victim) == before and link.is_symlink(), r.output
    assert r.exit_code == 2 and one_error_naming(r.output, link), r.output


@pytest.mark.parametrize("rel", ["outputs", "outputs/bicubic", "results", "inputs/<lr>"])
def test_fresh_removes_nothing_through_a_linked_folder(hr_folder, tmp_path, rel):
    """--fresh (another configuration) removes what compare wrote: never what a linked folder holds
    (``outputs`` linked: the rmtree of ``outputs/bicubic`` went into the user's folder)."""
    out = tmp_path / "out"
    assert compare(hr_folder, out).exit_code == 0
    if rel == "inputs/<lr>":
        rel = f"inputs/{next((out / 'inputs').iterdir()).name}"
    victim = victim_folder(tmp_path, "bicubic/thesis.tex", "bicubic.jsonl", "bicubic.meta.json", "manifest.json",
                           "img0.png")
    before = snapshot(victim)
    link = plant(out, rel, victim)
    r = invoke("compare", "--methods", "bicubic", "--scale", 2, "--data", hr_folder, "--out", out,
               "--metrics", "psnr_rgb", "--device", "cpu", "-q", "--fresh")
    assert snapshot(victim) == before and link.is_symlink(), r.output
    assert r.exit_code == 2 and one_error_naming(r.output, link), r.output


def test_the_out_folder_itself_may_be_a_link(hr_folder, tmp_path):
    """--out and its parents are the user's choice: a link there is followed, as any path is."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "out").symlink_to(real, target_is_directory=True)
    r = compare(hr_folder, tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert len(list((real / "outputs" / "bicubic").glob("*.png"))) == 4


# -- compare: a link planted mid-run --------------------------------------------------------------
@pytest.mark.parametrize("rel", ["outputs", "outputs/bicubic"])
def test_a_folder_swapped_for_a_link_mid_run_is_not_written_through(hr_folder, tmp_path, monkeypatch, rel):
    import restorekit.harness.runner as runner

    out = tmp_path / "out"
    victim = victim_folder(tmp_path, "mine.txt", "bicubic/mine.txt")
    before = snapshot(victim)
    real_record = runner.record
    planted: list[Path] = []

    def record_then_plant(p):  # once the folder is accepted and the inputs made, before any output
        real_record(p)
        (out / "outputs").mkdir(exist_ok=True)
        planted.append(plant(out, rel, victim))

    monkeypatch.setattr(runner, "record", record_then_plant)
    r = invoke("compare", "--methods", "bicubic", "--scale", 4, "--data", hr_folder, "--out", out,
               "--metrics", "psnr_rgb", "--device", "cpu", "--json")
    assert planted and snapshot(victim) == before, r.output
    assert r.exit_code == 1 and f"{planted[0]} {REFUSAL}" in r.output, r.output


@pytest.mark.skipif(not safe_open.DIR_FDS, reason="by name, a folder swapped midway is followed")
def test_an_atomic_write_stays_in_the_folder_it_opened(tmp_path, monkeypatch, descriptors_only):
    """The folder is walked once, by open descriptor: swapped for a link while the file is being
    written, the file still lands in the folder opened (moved aside), never in the linked one."""
    from restorekit import images

    out = tmp_path / "out"
    (out / "outputs" / "m").mkdir(parents=True)
    victim = victim_folder(tmp_path, "mine.txt")
    before = snapshot(victim)
    real_fdopen = os.fdopen

    def fdopen_then_swap(fd, *a, **kw):
        plant(out, "outputs/m", victim)
        return real_fdopen(fd, *a, **kw)

    monkeypatch.setattr(images.os, "fdopen", fdopen_then_swap)
    images.atomic_write_bytes(out / "outputs" / "m" / "a.png", b"data", root=out)
    monkeypatch.undo()
    assert snapshot(victim) == before
    assert (out / "moved-outputs-m" / "a.png").read_bytes() == b"data"
    assert [p.name for p in (out / "moved-outputs-m").iterdir()] == ["a.png"]  # no temp file left


def test_an_atomic_write_below_a_root_refuses_a_link_in_one_line(tmp_path):
    from restorekit import images

    out = tmp_path / "out"
    out.mkdir()
    victim = victim_folder(tmp_path, "mine.txt")
    link = plant(out, "outputs", victim)
    with pytest.raises(FileSystemError) as caught:
        images.save_image(__import__("torch").zeros(1, 3, 2, 2), out / "outputs" / "m" / "a.png", root=out)
    assert str(caught.value) == (f"{link} {REFUSAL} (it could point at any folder): remove it, or use another "
                                 "folder")
    assert type(caught.value) is safe_open.LinkedFolderError  # itself, not a copy of its line
    again = __import__("pickle").loads(__import__("pickle").dumps(caught.value))  # (as a worker hands it back)
    assert type(again) is safe_open.LinkedFolderError and str(again) == str(caught.value)
    assert snapshot(victim) == {"mine.txt": b"the user's mine.txt\n", OLD_TEMP: b"the user's " + OLD_TEMP.encode()
                                + b"\n"}
    images.atomic_write_bytes(out / "top.json", b"{}", root=out)  # (a file in the root itself)
    assert (out / "top.json").read_bytes() == b"{}"


def test_the_temp_file_sweep_skips_a_linked_folder(tmp_path):
    from restorekit.images import sweep_temp_files

    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    victim = victim_folder(tmp_path)
    plant(out, "outputs", victim)
    mine = out / "results" / OLD_TEMP
    mine.write_bytes(b"x")
    os.utime(mine, (time.time() - 3600,) * 2)
    assert sweep_temp_files([out / "results", out / "outputs", out / "missing"], root=out) == 1
    assert (victim / OLD_TEMP).exists() and not mine.exists()


def test_the_result_store_removes_nothing_through_a_linked_folder(tmp_path):
    from restorekit.harness.store import ResultStore

    out = tmp_path / "out"
    out.mkdir()
    victim = victim_folder(tmp_path, "m.jsonl", "m.meta.json", "parts/m/rank0.jsonl")
    before = snapshot(victim)
    plant(out, "results", victim)
    store = ResultStore(out)
    for act in (lambda: store.clear("m"), lambda: store.save_meta("m", "s", {}), lambda: store.compact("m", [])):
        with pytest.raises(FileSystemError, match=REFUSAL):
            act()
    assert snapshot(victim) == before


def test_open_folder_walks_without_following_links(tmp_path):
    from restorekit.safe_open import LinkedFolderError, open_folder

    root = tmp_path / "root"
    with open_folder(root, "a/b") as f:  # made, root included
        os.close(os.open(f.at("x"), os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=f.fd))
    assert (root / "a" / "b" / "x").is_file()
    plant(root, "a/b", tmp_path)
    with pytest.raises(LinkedFolderError) as caught:
        open_folder(root, "a/b/c")
    assert caught.value.filename == str(root / "a" / "b") and not (tmp_path / "c").exists()
    with pytest.raises(FileNotFoundError):
        open_folder(root, "a/none", create=False)
    with pytest.raises(ValueError):
        open_folder(root, "a/../..")
    (tmp_path / "via").symlink_to(root, target_is_directory=True)
    with open_folder(tmp_path / "via") as f:  # the root itself may be a link
        assert sorted(e.name for e in f.entries()) == ["a", "moved-a-b"]


# -- run: the folders a stopped run made ----------------------------------------------------------
def test_a_stopped_run_removes_no_folder_a_planted_link_leads_to(hr_folder, tmp_path, monkeypatch):
    """``run`` stopped before its work removes the folders it made for ``--output``: by name, it
    had removed an empty folder of the user's once a shared parent it made was swapped for a link."""
    import restorekit.commands.run as run_module
    from restorekit.errors import RestorekitError

    shared = tmp_path / "shared"
    shared.mkdir()
    home = tmp_path / "home"
    (home / "out").mkdir(parents=True)  # the user's own, empty
    out = shared / "new" / "out"

    def swap_then_fail(*a, **kw):
        (shared / "new").rename(shared / "moved")
        (shared / "new").symlink_to(home, target_is_directory=True)
        raise RestorekitError("bicubic: cannot be built here")

    monkeypatch.setattr(run_module, "build_method", swap_then_fail)
    r = invoke("run", "bicubic", "--scale", 2, "--input", hr_folder, "--output", out, "-q")
    assert r.exit_code == 2 and "cannot be built here" in r.output, r.output
    assert (home / "out").is_dir()
    assert (shared / "new").is_symlink()  # (the link is left; the folders it made were moved aside)


# -- the user's own links: followed -----------------------------------------------------------------
def test_compare_follows_the_users_own_links_and_fresh_keeps_them(hr_folder, tmp_path, own_links):
    """``report/outputs -> /bigdisk/...`` made by the user: written through, reused, and with
    ``--fresh`` cleared of compare's files, not replaced by a folder of its own (it had been refused
    outright); a file of the user's there stays, and is named."""
    out, big = tmp_path / "report", tmp_path / "bigdisk"
    out.mkdir()
    for name in ("outputs", "inputs"):
        (big / name).mkdir(parents=True)
        (out / name).symlink_to(big / name, target_is_directory=True)
    r = compare(hr_folder, out)
    assert r.exit_code == 0, r.output
    assert len(list((big / "outputs" / "bicubic").glob("*.png"))) == 4
    assert [p.name for p in (big / "inputs").iterdir()] and (out / "outputs").is_symlink()
    assert compare(hr_folder, out).exit_code == 0  # reused: the same folder holds the same configuration
    (big / "outputs" / "bicubic" / "stale.png").write_bytes(b"old")
    r = compare(hr_folder, out, "--scale", 2, "--fresh")  # (the last --scale wins) another configuration
    assert r.exit_code == 0, r.output
    assert (out / "outputs").is_symlink() and (out / "inputs").is_symlink()
    assert sorted(p.name for p in (big / "outputs" / "bicubic").iterdir()) == [f"img{i}.png" for i in range(4)] + ["stale.png"]
    assert (big / "outputs" / "bicubic" / "stale.png").read_bytes() == b"old"
    assert "--fresh kept 1 file in " in r.output and "that compare did not write" in r.output, r.output
    assert len(list((big / "inputs").iterdir())) == 1  # the ×4 LR folder went, the ×2 one is there


def test_a_method_folder_linked_by_the_user_is_emptied_by_fresh_not_unlinked(hr_folder, tmp_path, own_links):
    out, big = tmp_path / "report", tmp_path / "bigdisk" / "bicubic"
    (out / "outputs").mkdir(parents=True)
    big.mkdir(parents=True)
    (out / "outputs" / "bicubic").symlink_to(big, target_is_directory=True)
    assert compare(hr_folder, out).exit_code == 0
    assert len(list(big.glob("*.png"))) == 4
    r = compare(hr_folder, out, "--scale", 2, "--fresh")
    assert r.exit_code == 0, r.output
    assert (out / "outputs" / "bicubic").is_symlink() and len(list(big.glob("*.png"))) == 4


def test_open_folder_follows_only_the_users_own_links(tmp_path, monkeypatch, own_links):
    """The one rule (``safe_open.own_link``): the owner of the link is the user running restorekit."""
    from restorekit.images import atomic_write_bytes

    root, target = tmp_path / "root", tmp_path / "target"
    target.mkdir()
    root.mkdir()
    (root / "outputs").symlink_to("../target", target_is_directory=True)  # relative: from the link's folder
    atomic_write_bytes(root / "outputs" / "m" / "a.png", b"data", root=root)
    assert (target / "m" / "a.png").read_bytes() == b"data"
    safe_open.check_folders(root, ["outputs", "outputs/m", "outputs/none", "none"])  # no refusal
    uid = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: uid + 1)  # the same link, another user's now
    with pytest.raises(safe_open.LinkedFolderError):
        safe_open.check_folders(root, ["outputs/m"])
    with pytest.raises(safe_open.LinkedFolderError):
        atomic_write_bytes(root / "outputs" / "m" / "b.png", b"data", root=root)
    monkeypatch.delattr(os, "geteuid")  # no user ids (Windows): no link is the user's
    with pytest.raises(safe_open.LinkedFolderError, match="on this platform"):
        safe_open.open_folder(root, "outputs")
    assert not (target / "m" / "b.png").exists()


@pytest.mark.skipif(not safe_open.DIR_FDS, reason="folder descriptors")
def test_a_link_swapped_between_its_owner_check_and_its_read_is_refused(tmp_path, monkeypatch, own_links,
                                                                        descriptors_only):
    root, mine, victim = tmp_path / "root", tmp_path / "mine", victim_folder(tmp_path, "mine.txt")
    mine.mkdir()
    root.mkdir()
    (root / "outputs").symlink_to(mine, target_is_directory=True)
    real_readlink = os.readlink

    def swap_then_read(path, *, dir_fd=None):  # another link in its place, right after the owner's check
        os.rename(path, "aside", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # (kept: its inode is not reused)
        os.symlink(victim, path, dir_fd=dir_fd)
        return real_readlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(safe_open.os, "readlink", swap_then_read)
    with pytest.raises(safe_open.LinkedFolderError):
        safe_open.open_folder(root, "outputs/m")
    assert sorted(p.name for p in victim.iterdir()) == sorted(["mine.txt", OLD_TEMP])


def test_a_users_link_to_nothing_is_one_line_naming_it(tmp_path, own_links):
    from restorekit.images import atomic_write_bytes

    root = tmp_path / "root"
    root.mkdir()
    (root / "outputs").symlink_to(tmp_path / "unmounted", target_is_directory=True)
    with pytest.raises(FileSystemError) as caught:
        atomic_write_bytes(root / "outputs" / "a.png", b"x", root=root)
    text = str(caught.value)
    assert "\n" not in text and text.startswith(f"cannot write {root / 'outputs' / 'a.png'}: "), text
    assert not (tmp_path / "unmounted").exists()  # not made: the link's target is the user's to mount or make


# -- a FIFO planted where compare reads its records ---------------------------------------------------
def in_thread(fn, fifo: Path, timeout: float = 60.0):
    """``fn()`` run in a thread: its result within ``timeout``, else the test fails (after a write
    end is opened on ``fifo`` so that the thread stuck reading it ends)."""
    import threading

    box: dict[str, object] = {}
    t = threading.Thread(target=lambda: box.update(value=fn()), daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))
        t.join(10)
        pytest.fail(f"hung reading the FIFO {fifo}")
    return box.get("value")


def test_a_fifo_planted_as_an_lr_manifest_does_not_hang_compare(hr_folder, tmp_path):
    out = tmp_path / "out"
    assert compare(hr_folder, out).exit_code == 0
    manifest = next((out / "inputs").iterdir()) / "manifest.json"
    manifest.unlink()
    os.mkfifo(manifest)
    r = in_thread(lambda: compare(hr_folder, out), manifest)
    assert r.exit_code == 0, r.output
    assert manifest.is_file() and '"images"' in manifest.read_text()  # remade, the FIFO replaced


def test_a_fifo_planted_as_compare_json_does_not_hang_compare(hr_folder, tmp_path):
    out = tmp_path / "out"
    assert compare(hr_folder, out).exit_code == 0
    (out / "compare.json").unlink()
    os.mkfifo(out / "compare.json")
    r = in_thread(lambda: compare(hr_folder, out), out / "compare.json")
    assert r.exit_code == 2 and "compare.json is unreadable" in r.output, r.output
    r = in_thread(lambda: compare(hr_folder, out, "--fresh"), out / "compare.json")
    assert r.exit_code == 0 and (out / "compare.json").is_file(), r.output


# -- how much a write walks ---------------------------------------------------------------------------
def test_a_write_into_existing_folders_makes_no_folder(tmp_path, monkeypatch):
    """Each write below a root had made the root (``mkdir -p``) and tried to make each folder on the
    way (``EEXIST``): 3,000 outputs took a third longer. Now folders are opened first, made when missing."""
    from restorekit.images import atomic_write_bytes

    root = tmp_path / "out"
    atomic_write_bytes(root / "outputs" / "m" / "a.png", b"1", root=root)  # makes them
    made: list[str] = []
    real_mkdir = os.mkdir

    def counting_mkdir(path, *a, **kw):
        made.append(str(path))
        return real_mkdir(path, *a, **kw)

    monkeypatch.setattr(os, "mkdir", counting_mkdir)
    atomic_write_bytes(root / "outputs" / "m" / "b.png", b"2", root=root)
    assert made == []
    atomic_write_bytes(root / "outputs" / "n" / "c.png", b"3", root=root)
    assert [Path(p).name for p in made] == ["n"]
    assert (root / "outputs" / "n" / "c.png").read_bytes() == b"3"
