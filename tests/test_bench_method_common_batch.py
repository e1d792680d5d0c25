"""bench method --batch 1 --compare-batch 8 printed a ratio of batch 8 against batch 1 while the
warning said it used batch 1 of each."""

from __future__ import annotations

import json

from click.testing import CliRunner

from restorekit.cli import build_cli


def bench(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(build_cli(), ["bench", "method", "bicubic", "--compare-to", "bicubic", "--size", "16",
                                         "--repeat", "1", "--warmup", "0", "--compare-repeat", "1", "--device",
                                         "cpu", "--json", *args])
    return r.exit_code, r.stdout, r.output


def test_lists_without_a_batch_size_in_common_are_refused_before_any_work() -> None:
    code, out, text = bench("--batch", "1", "--compare-batch", "8")
    lines = [ln for ln in text.splitlines() if "share no batch size" in ln]
    assert code == 2 and len(lines) == 1 and "--batch 1 and --compare-batch 8" in lines[0], text
    assert "{" not in out  # no figures


def test_the_ratio_is_given_at_the_batch_sizes_both_lists_share() -> None:
    code, out, text = bench("--batch", "1,2", "--compare-batch", "2,4")
    assert code == 0, text
    data = json.loads(out[out.index("{"):])
    assert set(data["speed_ratio"]) == {"2"}


def test_without_compare_batch_the_second_method_is_timed_at_the_smallest_batch() -> None:
    """--batch 4 alone with --compare-to used to be refused for a --compare-batch never given."""
    code, out, text = bench("--batch", "4,8")
    assert code == 0, text
    data = json.loads(out[out.index("{"):])
    assert set(data["speed_ratio"]) == {"4"}
