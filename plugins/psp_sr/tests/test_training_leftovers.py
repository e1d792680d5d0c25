"""scripts/gpu/race.py reads a snapshot's ``metrics.jsonl`` in both forms a run leaves — strict JSON,
as a run writes it now, and the bare ``Infinity``/``NaN`` of lines written before — and writes its
ranking as strict JSON, leaving a distance that is not finite out of the ranking."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch

from restorekit.images import save_image
from script_modules import script_module
from tiny_models import REPO

RACE = REPO / "scripts" / "gpu" / "race.py"
pytestmark = pytest.mark.skipif(not RACE.is_file(), reason="scripts/gpu is not here")


def no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@pytest.fixture()
def race(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, dict[str, float]]:
    """race.py with the realism measurement replaced by the distances a test sets (by run name)."""
    from restorekit.harness.realism import evaluate, spaces
    from restorekit_psp_sr import train

    distances: dict[str, float] = {}

    class Net:
        def to(self, device: Any) -> "Net":
            return self

        def eval(self) -> "Net":
            return self

    def measured(g: Any, ref: Any, *, label: str, **kw: Any) -> Any:
        return SimpleNamespace(figures=[SimpleNamespace(metric="frechet_test", distance=distances[label])])

    monkeypatch.setattr(spaces, "build_space", lambda name, **kw: name)
    monkeypatch.setattr(evaluate, "reference_statistics", lambda val, used: {})
    monkeypatch.setattr(evaluate, "evaluate_generator", measured)
    monkeypatch.setattr(train, "load_generator", lambda path, impl="auto": Net())
    return script_module(RACE), distances


def snapshot(folder: Path, lines: list[str]) -> Path:
    folder.mkdir(parents=True)
    (folder / "generator.safetensors").write_bytes(b"weights")
    (folder / "metrics.jsonl").write_text("".join(ln + "\n" for ln in lines))
    return folder


def test_race_reads_old_and_new_metrics_lines_and_writes_strict_json(tmp_path: Path, race: Any,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    module, distances = race
    (tmp_path / "val.txt").write_text("a.png\n")
    save_image(torch.full((1, 3, 8, 8), 0.5), tmp_path / "a.png")  # (the race reads the split as training does)
    old = snapshot(tmp_path / "old", ['{"step": 2, "kimg": 0.5, "seconds": 3.0, "loss_d": NaN}',
                                      '{"step": 4, "kimg": 1.0, "seconds": Infinity, "loss_d": -Infinity}'])
    new = snapshot(tmp_path / "new", ['{"step": 2, "kimg": 0.5, "seconds": 3.0, "loss_d": 1.5}',
                                      '{"step": 6, "kimg": 1.5, "seconds": "Infinity", "loss_d": null}'])
    bad = snapshot(tmp_path / "bad", ['{"step": 6, "kimg": 1.5, "seconds": 9.0}'])
    distances.update(old=12.5, new=10.25, bad=math.nan)
    out = tmp_path / "race.json"
    code = module.main(["--data", str(tmp_path), "--val", str(tmp_path / "val.txt"), "--out", str(out),
                        f"old={old}", f"new={new}", f"bad={bad}"])
    assert code == 0
    assert capsys.readouterr().out.splitlines()[-1] == "new"  # the NaN distance is not the lowest
    doc = json.loads(out.read_text(), parse_constant=no_constant)  # strict JSON
    assert doc["winner"] == "new"
    assert doc["runs"] == {"old": {"frechet": 12.5, "kimg": 1.0, "step": 4, "seconds": "Infinity"},
                           "new": {"frechet": 10.25, "kimg": 1.5, "step": 6, "seconds": "Infinity"},
                           "bad": {"frechet": None, "kimg": 1.5, "step": 6, "seconds": 9.0}}


def test_race_without_a_finite_distance_has_no_winner(tmp_path: Path, race: Any,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    module, distances = race
    (tmp_path / "val.txt").write_text("a.png\n")
    save_image(torch.full((1, 3, 8, 8), 0.5), tmp_path / "a.png")  # (the race reads the split as training does)
    one = snapshot(tmp_path / "one", ['{"step": 1, "kimg": 0.1, "seconds": 1.0}'])
    distances.update(one=math.inf)
    out = tmp_path / "race.json"
    assert module.main(["--data", str(tmp_path), "--val", str(tmp_path / "val.txt"), "--out", str(out),
                        f"one={one}"]) == 1
    said = capsys.readouterr()
    assert said.out.splitlines()[-1].startswith("race: one: ")  # run.sh then continues its own choice
    assert "no snapshot has a finite distance" in said.err
    doc = json.loads(out.read_text(), parse_constant=no_constant)
    assert doc["winner"] is None and doc["runs"]["one"]["frechet"] == "Infinity"
