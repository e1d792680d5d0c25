"""``compare`` refuses methods whose output folders and result files would be one on a
case-insensitive disk (macOS, Windows): ``bicubic@A`` and ``bicubic@a``."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from restorekit.cli import build_cli
from restorekit.harness.runner import CompareConfig, CompareUsageError, plan
from restorekit.harness.store import file_key


def test_file_key_ignores_case_and_normalisation() -> None:
    assert file_key("bicubic@A") == file_key("bicubic@a")
    assert file_key("psp_sr@Cs3") == file_key("PSP_SR@cs3")
    assert file_key("bicubic@a") != file_key("bicubic@b")
    assert file_key("a b") == file_key("A_B")  # the same file name once made safe


def test_compare_refuses_labels_that_differ_only_in_case(tmp_path: Path) -> None:
    (tmp_path / "hr").mkdir()  # refused before the data is looked at
    with pytest.raises(CompareUsageError, match=r"'bicubic@A' and 'bicubic@a' differ only in letter case"):
        plan(CompareConfig(methods=["bicubic@A", "bicubic@a"], scale=2, data=str(tmp_path / "hr"),
                           out=tmp_path / "o", device="cpu"))


def test_compare_cli_names_both_and_writes_nothing(tmp_path: Path) -> None:
    res = CliRunner().invoke(build_cli(), ["compare", "--methods", "bicubic,bicubic@X,bicubic@x", "--scale", "2",
                                           "--data", str(tmp_path / "hr"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    err = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(err) == 1 and "'bicubic@X' and 'bicubic@x'" in err[0], res.output
    assert not (tmp_path / "o").exists()


def test_labels_that_differ_otherwise_still_run(tmp_path: Path) -> None:
    (tmp_path / "hr").mkdir()
    p = plan(CompareConfig(methods=["bicubic", "bicubic@a", "bicubic@b"], scale=2, data=str(tmp_path / "hr"),
                           out=tmp_path / "o", device="cpu"))
    assert [m.name for m in p.methods] == ["bicubic", "bicubic@a", "bicubic@b"]
