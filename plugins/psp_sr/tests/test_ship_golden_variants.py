"""scripts/ship_embedded_model.py writes the goldens the embedded-model tests read: shipped on tiny
random models (tiny_models.ship_tiny, never into the repository), the golden files hold every
``PINS`` variant and ``generate``'s own draw of each seed, and the tests' checks reproduce them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from test_embedded_golden_variants import check_pin
from tiny_models import SHIP_SCRIPT, Shipped, ship_tiny

pytestmark = pytest.mark.skipif(not SHIP_SCRIPT.is_file(), reason="scripts/ship_embedded_model.py is not here")


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shipped]:
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        yield ship_tiny(tmp_path_factory.mktemp("ship"), mp)


def test_every_pin_is_written_and_reproduced_on_the_shipped_files(shipped: Shipped) -> None:
    checked = []
    for kind, file in (("stylegan2", shipped.generator_file), ("psp_sr", shipped.psp_file)):
        variants = json.loads(file.with_suffix(".golden.json").read_text())["variants"]
        assert list(variants) == list(shipped.ship.PINS[kind]) and variants
        for name, record in variants.items():
            check_pin(record, atol=1e-6, mean_atol=1e-6, rel=1e-5)  # the same machine: what was written
            checked.append(name)
    assert {"pulse steps=5", "psp_pulse steps=5", "psp_sr x4"} <= set(checked)


def test_the_generator_golden_says_what_it_holds_and_pins_generate_per_seed(shipped: Shipped, rk_cli,
                                                                            tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    golden = json.loads(shipped.generator_file.with_suffix(".golden.json").read_text())
    assert "seeds" not in golden and golden["n"] == 2 and "one seed-0 draw" in golden["rows"]
    rec = golden["generate"]
    r = rk_cli("generate", "--generator", "stylegan2", "--seeds", "0-1", "--truncation", rec["truncation"],
               "--output", tmp_path, "-q")
    assert r.exit_code == 0, r.output
    levels = np.stack([np.asarray(Image.open(tmp_path / f"seed{s:04d}.png").convert("RGB")).transpose(2, 0, 1)
                       for s in rec["seeds"]])
    assert levels[:, :, ::32, ::32].tolist() == rec["levels_every_32px"] and rec["seeds"] == [0, 1]
    assert levels.mean() / 255 == pytest.approx(rec["mean"], abs=1e-12)
