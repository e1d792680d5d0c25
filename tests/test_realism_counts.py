"""realism's sample counts have a ceiling: a count no machine holds is a usage error (exit 2)
naming the range, before any work — not an allocation failure once the references are done."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("flag,value,top", [("--n", 10**12, "200000"), ("--detect-n", 10**12, "10000")])
def test_realism_sample_counts_have_a_ceiling(rk_cli, hr_folder, flag, value, top):
    # --n 10**12 ended with 'unexpected RuntimeError: ... can't allocate memory ... report it' once
    # the reference statistics were done.
    r = rk_cli("realism", "--generator", "no_such_generator", "--data", hr_folder, flag, value,
               "--spaces", "dlib", "--detector", "none", "--cache", "none")
    text = " ".join((r.output + r.stderr).split())
    assert r.exit_code == 2 and "unexpected" not in text, text
    assert flag in text and f"{value} is not in the range" in text and f"<={top}" in text, text
