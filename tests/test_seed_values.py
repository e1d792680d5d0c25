"""Seeds on the command line: every seed option takes 0 … 2**64 − 1 (what torch's generators
take); a seed outside it, or a seed list longer than a command runs at once, is a usage error
(exit 2) naming the limit — before any work, and without building the list."""

from __future__ import annotations

import time

import click
import pytest


TOO_BIG = str(2**64)
LARGEST = str(2**64 - 1)
RANGE = f"seeds are 0 to {LARGEST}"


def _usage(r, *needles: str) -> None:  # type: ignore[no-untyped-def]
    text = " ".join((r.output + r.stderr).split())
    assert r.exit_code == 2 and "unexpected" not in text and "Traceback" not in text, (r.exit_code, text)
    for needle in needles:
        assert needle in text, text


def test_parse_seeds_lists_ranges_and_drops_repeats():
    from restorekit.seeds import parse_seeds

    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_seeds(" 5 , 2-3 ,3, 5") == [5, 2, 3]
    assert parse_seeds(f"{LARGEST}") == [2**64 - 1]
    assert parse_seeds(f"{2**64 - 2}-{LARGEST}") == [2**64 - 2, 2**64 - 1]


@pytest.mark.parametrize("text,msg", [
    (TOO_BIG, f"seed {TOO_BIG} is out of range: {RANGE}"),
    (f"0-{TOO_BIG}", f"seed {TOO_BIG} is out of range: {RANGE}"),
    ("-1", f"seed -1 is out of range: {RANGE}"),
    ("x", "'x' is not a seed or a range like 0-7"),
    ("1-x", "'1-x' is not a seed or a range like 0-7"),
    ("7-3", "'7-3': a range goes up (3-7)"),
    ("", "no seeds given"),
    (" , ", "no seeds given"),
])
def test_parse_seeds_refuses_with_one_line(text, msg):
    from restorekit.seeds import parse_seeds

    with pytest.raises(click.BadParameter) as err:
        parse_seeds(text)
    assert str(err.value.message) == msg


def test_a_huge_range_is_refused_without_building_it():
    from restorekit.seeds import parse_seeds

    t = time.perf_counter()
    with pytest.raises(click.BadParameter) as err:
        parse_seeds("0-1000000000000", limit=1000)
    assert time.perf_counter() - t < 1.0
    assert str(err.value.message) == "1,000,000,000,001 seeds; at most 1,000 in one run (split the job)"
    with pytest.raises(click.BadParameter, match="1,001 seeds; at most 1,000"):
        parse_seeds("0-499,1000-1500", limit=1000)
    assert len(parse_seeds("0-999", limit=1000)) == 1000


@pytest.mark.parametrize("seeds,msg", [
    (TOO_BIG, f"seed {TOO_BIG} is out of range: {RANGE}"),
    (f"5-{TOO_BIG}", f"seed {TOO_BIG} is out of range: {RANGE}"),
    ("0-2000000", "2,000,001 seeds; at most 100,000 in one run"),
])
def test_generate_seeds_out_of_range_or_too_many_is_usage_error(rk_cli, tmp_path, seeds, msg):
    r = rk_cli("generate", "--generator", "no_such_generator", "--seeds", seeds, "--output", tmp_path / "out")
    _usage(r, "--seeds", msg)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seed", [TOO_BIG, "-1"])
def test_run_seed_out_of_range_is_usage_error(rk_cli, hr_folder, tmp_path, seed):
    r = rk_cli("run", "bicubic", "--scale", "2", "--seed", seed, "--input", hr_folder, "--output", tmp_path / "out")
    _usage(r, "--seed", f"0<=x<={LARGEST}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seeds,msg", [
    (TOO_BIG, f"seed {TOO_BIG} is out of range: {RANGE}"),
    ("0,-3", f"seed -3 is out of range: {RANGE}"),
    ("0-5000", "5,001 seeds; at most 1,000 in one run"),
])
def test_compare_seeds_out_of_range_or_too_many_is_usage_error(rk_cli, hr_folder, tmp_path, seeds, msg):
    r = rk_cli("compare", "--methods", "bicubic", "--scale", "2", "--data", hr_folder, "--seeds", seeds,
               "--out", tmp_path / "o", "-q")
    _usage(r, "--seeds", msg)
    assert not (tmp_path / "o").exists()


def test_compare_takes_seed_ranges_like_generate(rk_cli, hr_folder, tmp_path):
    r = rk_cli("compare", "--methods", "bicubic", "--scale", "2", "--data", hr_folder, "--seeds", "0-2,2",
               "--metrics", "psnr_rgb", "--out", tmp_path / "o", "-q", "--device", "cpu")
    assert r.exit_code == 0, r.output + r.stderr


def test_compare_plan_refuses_a_seed_out_of_range(hr_folder, tmp_path):
    from restorekit.harness.runner import CompareConfig, CompareUsageError, plan

    with pytest.raises(CompareUsageError, match=rf"--seeds: seed {TOO_BIG} is out of range: {RANGE}"):
        plan(CompareConfig(methods=["bicubic"], scale=2, data=str(hr_folder), out=tmp_path / "o", seeds=[0, 2**64]))


@pytest.mark.parametrize("seed", [TOO_BIG, "-1"])
def test_realism_seed_out_of_range_is_usage_error(rk_cli, hr_folder, seed):
    r = rk_cli("realism", "--generator", "no_such_generator", "--data", hr_folder, "--seed", seed,
               "--spaces", "dlib", "--detector", "none", "--cache", "none")
    _usage(r, "--seed", f"0<=x<={LARGEST}")
