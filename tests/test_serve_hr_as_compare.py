"""``restorekit serve`` treats the HR as compare does: an upload smaller than the scale is refused in
compare's words (it was named by its LR's 0 px side), and a face crop is scored as the PNG the
page shows (it was scored as float32 off the 8-bit grid)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("starlette", reason="restorekit serve needs the web extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="restorekit serve needs the web extra (starlette, uvicorn)")

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from serve_helpers import generated_face, png, post_json, request, resolve, upload, wait_job  # noqa: E402

from restorekit.degradations import parse_spec  # noqa: E402
from restorekit.errors import ImageError  # noqa: E402
from restorekit.harness.inputs import degrade_hr  # noqa: E402
from restorekit.images import read_image_bytes  # noqa: E402
from restorekit.plugins import registry  # noqa: E402
from restorekit.web import work  # noqa: E402
from restorekit.web.config import ServeConfig  # noqa: E402
from restorekit.web.server import RunningServer, start  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cfg = ServeConfig(port=0, device="cpu", methods=["bicubic"], metrics=["psnr_y_crop"], max_upload_mb=0.2,
                      temp_parent=tmp_path_factory.mktemp("serve"))
    srv = start(cfg)
    yield srv
    srv.stop()


def compare_says(width: int, height: int, scale: int, name: str) -> str:
    """What compare (and degrade) say of an HR image of this size at this scale."""
    with pytest.raises(ImageError) as err:
        degrade_hr(torch.full((1, 3, height, width), 0.5), parse_spec(f"bicubic:{scale}"), scale, where=name)
    return str(err.value)


@pytest.mark.parametrize("width, height", [(3, 5), (5, 5)])
def test_an_upload_too_small_for_the_scale_is_refused_as_compare_refuses_it(server: RunningServer, width: int,
                                                                            height: int) -> None:
    name = f"tiny{width}x{height}.png"
    status, up = upload(server.url, png(Image.new("RGB", (width, height), (120, 90, 60))), name)
    assert status == 201, up
    status, err = post_json(server.url, "/api/jobs", {"upload": up["id"], "methods": ["bicubic"], "scale": 4,
                                                      "degrade": True})
    assert (status, err["error"]) == (400, compare_says(width, height, 4, name))
    if width == 3:  # was "tiny3x5.png: its ×4 LR: 0×1 is too small (each side must be ≥ 2 px)"
        assert err["error"] == "tiny3x5.png: 3×5 is smaller than the scale 4 (each side must be ≥ 4 px)"


def test_a_face_crop_is_scored_as_the_png_shown(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    if server.state.catalogue.detector is None:
        pytest.skip(f"no face detector here: {server.state.catalogue.detector_reason}")

    def off_grid_crop(photo: torch.Tensor, size: int, detector: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        y = torch.linspace(0, 1, size)[:, None]
        x = torch.linspace(0, 1, size)[None, :]
        grey = 0.45 + 0.2 * torch.sin(9 * x + 4 * y) + 0.1 * torch.cos(13 * y) + 0.3 / 255
        return torch.stack([grey, grey * 0.9, grey * 0.8]).clamp(0, 1)[None], {"box": [4.0, 4.0, 40.0, 40.0]}

    monkeypatch.setattr(work, "largest_face_crop", off_grid_crop)
    status, up = upload(server.url, png(generated_face(64)), "face.png")
    assert status == 201, up
    status, job = post_json(server.url, "/api/jobs", {"upload": up["id"], "methods": ["bicubic"], "scale": 4,
                                                      "faces": "crop", "degrade": True})
    assert status == 202, job
    job = wait_job(server.url, job["id"])
    assert job["status"] == "done", job
    r = job["result"]
    [row] = r["methods"]

    def shown(url: str) -> torch.Tensor:
        status, _, body = request(server.url, "GET", resolve(server.url + "/", url))
        assert status == 200
        return read_image_bytes(body, "shown.png")

    images = {i["role"]: shown(i["url"]) for i in r["images"]}
    sr = shown(row["outputs"][0]["url"])
    assert images["hr"].shape[-1] == 128 and images["lr"].shape[-1] == 32
    metric = registry().metric("psnr_y_crop")()
    metric.setup(torch.device("cpu"))
    value = float(metric(sr, images["hr"], lr=images["lr"], scale=4)[0])
    assert row["per_output"][0]["metrics"]["psnr_y_crop"] == value  # was off by the HR's rounding
