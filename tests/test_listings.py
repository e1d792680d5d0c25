"""`methods`, `plugins` and `weights list` read well at 80 and at 200 columns (rich honours COLUMNS)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from restorekit.cli import build_cli
from restorekit.plugins import registry


def rk(*args: str, columns: int) -> tuple[int, str]:
    r = CliRunner().invoke(build_cli(), list(args), env={"COLUMNS": str(columns)})
    return r.exit_code, r.output


def body(output: str, first_cell: str) -> list[str]:
    """The lines after the header row (the one starting with ``first_cell``)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [first_cell])
    return lines[start + 1:]


def test_methods_fit_80_columns_one_line_each() -> None:
    names = registry().names("methods")
    code, out = rk("methods", columns=80)
    assert code == 0, out
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80
    rows = [line for line in body(out, "name") if line.strip()]
    # each method on one line (≤ 2 allowed), with its name, plugin, scales, weights state and license whole
    assert len(rows) == len(names) and [r.split()[0] for r in rows] == names
    head = out.splitlines()[[i for i, l in enumerate(out.splitlines()) if l.startswith("name")][0]]
    assert head.split()[:6] == ["name", "plugin", "scales", "weights", "license", "summary"]
    for r in rows:
        cells = r.split()
        cls = registry().method(cells[0])
        assert cells[1] == registry().owner["methods"][cells[0]]
        assert cls.info.license in r
        assert any(state in r for state in ("none", "shipped", "cached", "pull needed", "missing", "damaged"))
        if len(cls.info.summary) > 30:
            assert r.rstrip().endswith("…") and cls.info.summary not in r  # cut, not wrapped


def test_methods_at_200_columns_show_whole_summaries() -> None:
    code, out = rk("methods", columns=200)
    assert code == 0
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 200
    rows = [line for line in body(out, "name") if line.strip()]
    for r in rows:
        cls = registry().method(r.split()[0])
        assert cls.info.summary in r and "…" not in r


def test_weights_state_of_methods() -> None:
    from restorekit.commands.info import method_weights_state

    assert method_weights_state(registry().method("bicubic")) == "none"
    if "pulse" in registry().names("methods"):  # its default: the face prior shipped in restorekit-psp-sr
        from restorekit.weights import all_specs

        want = "shipped" if "stylegan2-faces128" in all_specs() else "missing"  # registered once shipped
        assert method_weights_state(registry().method("pulse")) == want
    if "pix2pixhd" in registry().names("methods"):  # its default ships inside restorekit-baselines
        from restorekit_baselines.pix2pixhd import DEFAULT_MODEL_FILE, WEIGHTS_DIR

        want = "shipped" if (WEIGHTS_DIR / DEFAULT_MODEL_FILE).is_file() else "missing"
        assert method_weights_state(registry().method("pix2pixhd")) == want


def test_methods_json_unchanged_in_content() -> None:
    code, out = rk("methods", "--json", columns=80)
    rows = json.loads(out)
    cls = registry().method("bicubic")
    row = next(r for r in rows if r["name"] == "bicubic")
    assert set(row) == {"name", "plugin", "task", "summary", "license", "paper", "deterministic",
                        "one_sample_ignores_seed",
                        "requires_weights", "scales", "input_kind"}
    assert row["summary"] == cls.info.summary  # whole, whatever the width


def test_plugins_fit_80_columns_and_report_broken_in_full(plugin_site) -> None:  # type: ignore[no-untyped-def]
    plugin_site("thirdparty-broken", "broken_3p", "raise RuntimeError('boom: a long explanation of what went "
                "wrong while importing this plugin, longer than any terminal line')\n", ep_name="broken3p")
    code, out = rk("plugins", columns=80)
    assert code == 0, out
    lines = out.splitlines()
    details = [l for l in lines if "): broken: " in l]  # errors in full, below the table
    assert len(details) == 1 and all(len(l.rstrip()) <= 80 for l in lines if l not in details)
    table_rows = [l for l in body(out, "name") if l.split()[:1] and l.split()[0] in registry().plugins
                  and l not in details]
    assert len(table_rows) == len(registry().plugins)  # one line each
    broken = next(l for l in table_rows if l.startswith("broken3p"))
    assert " broken " in broken
    assert any(l.startswith("broken3p (thirdparty-broken): broken: RuntimeError: boom") and "terminal line" in l
               for l in lines)


@pytest.mark.parametrize("columns", [80, 200])
def test_weights_list_fits(columns: int, rk_home: Path) -> None:
    from restorekit import weights as W

    code, out = rk("weights", "list", columns=columns)
    assert code == 0, out
    assert max(len(line.rstrip()) for line in out.splitlines()) <= columns
    rows = [l for l in body(out, "name") if l.split()[:1] and l.split()[0] in W.all_specs()]
    assert [r.split()[0] for r in rows] == list(W.all_specs())  # every name whole, one line each
    for r in rows:
        assert r.split()[1] in ("shipped", "cached", "pull", "missing", "damaged")
        assert any(k in r.split() for k in ("pinned", "tofu", "unknown"))
    assert "trust on first use" in out


def test_plugins_show_load_times_and_name_a_slow_plugin(plugin_site, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from restorekit.commands import info

    monkeypatch.setattr(info, "SLOW_LOAD_S", 0.25)
    plugin_site("thirdparty-slow", "slow_3p", "import time\ntime.sleep(0.3)  # a heavy import at the top\n",
                ep_name="slow3p")
    code, out = rk("plugins", columns=200)
    assert code == 0, out
    row = next(l for l in body(out, "name") if l.startswith("slow3p "))
    assert float(row.split()[4]) >= 0.3 and row.split()[5] == "s"  # the load column
    # Only slow3p is certain to be named: on a busy machine another plugin may pass 0.25 s too.
    named = [l for l in out.splitlines() if "to import and register" in l and l.startswith("slow3p ")]
    assert len(named) == 1, out
    took = re.match(r"slow3p \(thirdparty-slow\) took (\d+\.\d) s to import and register", named[0])
    assert took and float(took.group(1)) >= 0.3, named[0]
    assert "every restorekit command pays it" in named[0]
    code, out = rk("plugins", "--json", columns=200)
    recs = {r["name"]: r for r in json.loads(out)}
    assert recs["slow3p"]["load_seconds"] >= 0.3
    assert all(isinstance(r["load_seconds"], float) for r in recs.values() if r["status"] == "ok")
