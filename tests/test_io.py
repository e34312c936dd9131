"""Image reading in every mode, masks, atomic writing and the all-or-nothing output directory."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from brgm_pyro import io
from brgm_pyro.errors import BRGMError


def _ramp(h=12, w=10):
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 7 + y * 13) % 256).astype(np.uint8)


def test_gray_png_values(tmp_path):
    a = _ramp()
    Image.fromarray(a).save(tmp_path / "g.png")
    img = io.read_image(tmp_path / "g.png")
    assert img.array.shape == (12, 10, 1) and img.array.dtype == np.float32
    np.testing.assert_allclose(img.array[:, :, 0], a / 255.0, atol=1e-7)
    assert img.mode == "L" and img.format == "PNG" and img.alpha is None


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    a = (np.arange(120).reshape(12, 10) * 500).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    img = io.read_image(tmp_path / "g16.png")
    assert img.mode.startswith("I")
    np.testing.assert_allclose(img.array[:, :, 0], a / 65535.0, atol=1e-6)
    assert img.array.max() < 1.0  # 59500 / 65535, not saturated at 255
    assert any("16-bit" in n for n in img.conversions)


def test_palette_png_expanded(tmp_path):
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[:3] = (255, 0, 0)
    rgb[3:] = (0, 0, 255)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    img = io.read_image(tmp_path / "p.png")
    assert img.mode == "P" and img.array.shape == (6, 6, 3)
    np.testing.assert_allclose(img.array[0, 0], [1, 0, 0])
    np.testing.assert_allclose(img.array[5, 5], [0, 0, 1])


def test_rgba_composited_onto_white_and_alpha_kept(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # fully transparent
    rgba[1, 1, 3] = 128  # half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = io.read_image(tmp_path / "a.png")
    assert img.array.shape == (4, 4, 3)
    np.testing.assert_allclose(img.array[0, 0], [1, 1, 1])  # white
    np.testing.assert_allclose(img.array[2, 2], [200 / 255, 0, 0], atol=1e-6)
    a = 128 / 255
    np.testing.assert_allclose(img.array[1, 1], [a * 200 / 255 + (1 - a), 1 - a, 1 - a], atol=1e-6)
    m = io.alpha_mask(img)
    assert m is not None and not m[0, 0] and m[1, 1] and m.sum() == 15


def test_la_and_jpeg_and_bilevel_and_cmyk(tmp_path):
    la = np.stack([_ramp(4, 4), np.full((4, 4), 255, np.uint8)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    img = io.read_image(tmp_path / "la.png")
    assert img.array.shape == (4, 4, 1) and img.alpha is None  # opaque alpha carries nothing
    rgb = np.stack([_ramp(16, 16)] * 3, -1)
    Image.fromarray(rgb).save(tmp_path / "x.jpg", quality=95)
    j = io.read_image(tmp_path / "x.jpg")
    assert j.format == "JPEG" and j.array.shape == (16, 16, 3)
    assert np.abs(j.array - rgb / 255.0).mean() < 0.05
    Image.fromarray(_ramp(5, 5) > 100).save(tmp_path / "b.png")
    b = io.read_image(tmp_path / "b.png")
    assert set(np.unique(b.array)) <= {0.0, 1.0}
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg")
    c = io.read_image(tmp_path / "c.jpg")
    assert c.array.shape == (16, 16, 3)


def test_float_tiff_and_nan(tmp_path):
    f = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    Image.fromarray(f, "F").save(tmp_path / "f.tif")
    np.testing.assert_allclose(io.read_image(tmp_path / "f.tif").array[:, :, 0], f, atol=1e-7)
    f[1, 1] = np.nan
    Image.fromarray(f, "F").save(tmp_path / "nan.tif")
    with pytest.raises(BRGMError, match="NaN"):
        io.read_image(tmp_path / "nan.tif")


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"hello, not an image", "not a recognised image")])
def test_non_images(tmp_path, content, match):
    p = tmp_path / "x.png"
    p.write_bytes(content)
    with pytest.raises(BRGMError, match=match):
        io.read_image(p)


def test_missing_truncated_and_directory(tmp_path):
    with pytest.raises(BRGMError, match="does not exist"):
        io.read_image(tmp_path / "nope.png")
    with pytest.raises(BRGMError, match="directory"):
        io.read_image(tmp_path)
    Image.fromarray(np.stack([_ramp(64, 64)] * 3, -1)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(BRGMError, match="damaged or truncated"):
        io.read_image(tmp_path / "t.png")


def test_constant_check():
    with pytest.raises(BRGMError, match="constant"):
        io.check_not_constant(np.full((4, 4, 3), 0.5, np.float32), "c.png")
    io.check_not_constant(np.eye(4, dtype=np.float32)[:, :, None], "ok.png")


def test_match_channels():
    rgb = np.random.default_rng(0).random((3, 3, 3)).astype(np.float32)
    g, note = io.match_channels(rgb, 1)
    np.testing.assert_allclose(g[:, :, 0], rgb @ np.array([0.299, 0.587, 0.114]), rtol=1e-5)
    assert note
    back, _ = io.match_channels(g, 3)
    assert back.shape == (3, 3, 3) and np.all(back[:, :, 0] == back[:, :, 2])
    same, note = io.match_channels(rgb, 3)
    assert same is rgb and note is None


def test_center_crop_resize():
    a = np.zeros((40, 60, 3), np.float32)
    a[:, 10:50] = 1.0  # the centre 40x40 square is all ones
    out, notes = io.center_crop_resize(a, 16)
    assert out.shape == (16, 16, 3)
    np.testing.assert_allclose(out, 1.0, atol=1e-6)
    assert len(notes) == 2
    same, notes = io.center_crop_resize(np.ones((8, 8, 1), np.float32), 8)
    assert notes == []


def test_masks(tmp_path):
    m = np.full((8, 8), 255, np.uint8)
    m[2:5, 3:6] = 0
    Image.fromarray(m).save(tmp_path / "m.png")
    mask, _ = io.read_mask(tmp_path / "m.png", (8, 8))
    assert mask.dtype == bool and (~mask).sum() == 9 and not mask[3, 4] and mask[0, 0]
    with pytest.raises(BRGMError, match="is 8x8 but the observation is 16x16"):
        io.read_mask(tmp_path / "m.png", (16, 16))
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "white.png")
    with pytest.raises(BRGMError, match="no missing pixel"):
        io.read_mask(tmp_path / "white.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "black.png")
    with pytest.raises(BRGMError, match="no observed pixel"):
        io.read_mask(tmp_path / "black.png")
    # transparency in a mask means missing
    rgba = np.full((8, 8, 4), 255, np.uint8)
    rgba[0, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "ma.png")
    mask, _ = io.read_mask(tmp_path / "ma.png")
    assert (~mask).sum() == 8 and not mask[0].any()
    d = io.default_mask(16)
    assert d.shape == (16, 16) and (~d).sum() == 64 and not d[8, 8] and d[0, 0]


def test_model_conversions_roundtrip():
    a = np.random.default_rng(0).random((5, 6, 3)).astype(np.float32)
    t = io.to_model(a)
    assert tuple(t.shape) == (3, 5, 6) and float(t.min()) >= -1 and float(t.max()) <= 1
    np.testing.assert_allclose(io.from_model(t), a, atol=1e-6)


def test_save_png_and_json(tmp_path):
    a = np.random.default_rng(0).random((5, 6, 3))
    p = io.save_png(tmp_path / "sub" / "x.png", a)
    back = np.asarray(Image.open(p))
    assert back.shape == (5, 6, 3)
    np.testing.assert_array_equal(back, np.round(a * 255).astype(np.uint8))
    io.save_png(tmp_path / "g.png", a[:, :, :1])
    assert Image.open(tmp_path / "g.png").mode == "L"
    io.save_json(tmp_path / "r.json", {"a": float("inf"), "b": np.float32(1.5), "c": [float("nan"), 2]})
    d = json.loads((tmp_path / "r.json").read_text())
    assert d == {"a": None, "b": 1.5, "c": [None, 2]}
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_output_dir_success_and_failure(tmp_path):
    target = tmp_path / "deep" / "out"
    with io.OutputDir(target) as out:
        io.save_json(out.path("run.json"), {"ok": 1})
        io.save_png(out.path("samples", "s0.png"), np.zeros((2, 2)))
        assert not target.exists()  # nothing visible until the end
    assert (target / "run.json").is_file() and (target / "samples" / "s0.png").is_file()
    assert sorted(os.listdir(target.parent)) == ["out"]  # no temp dir left

    target2 = tmp_path / "new" / "deeper" / "out2"
    with pytest.raises(RuntimeError):
        with io.OutputDir(target2) as out:
            io.save_json(out.path("run.json"), {"ok": 1})
            raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()  # created parents are removed too


def test_output_dir_refuses_and_overwrites(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(BRGMError, match="is a file"):
        io.OutputDir(tmp_path / "f")
    d = tmp_path / "d"
    d.mkdir()
    (d / "precious.txt").write_text("keep")
    with pytest.raises(BRGMError, match="not empty"):
        io.OutputDir(d)
    with pytest.raises(BRGMError, match="holds no run.json"):
        io.OutputDir(d, overwrite=True)
    assert (d / "precious.txt").read_text() == "keep"
    e = tmp_path / "e"
    e.mkdir()  # an empty directory is fine
    with io.OutputDir(e) as out:
        io.save_json(out.path("run.json"), {"v": 1})
    with io.OutputDir(e, overwrite=True) as out:
        io.save_json(out.path("run.json"), {"v": 2})
    assert json.loads((e / "run.json").read_text()) == {"v": 2}
    assert sorted(os.listdir(tmp_path)) == ["d", "e", "f"]


def test_sigint_deferred():
    import signal

    with pytest.raises(KeyboardInterrupt):
        with io.sigint_deferred() as state:
            os.kill(os.getpid(), signal.SIGINT)
            assert state["pressed"]  # the block continued
    with io.sigint_deferred() as state:
        pass
    assert not state["pressed"]


def test_stems():
    assert io.stems(["a/x.png", "b/x.png", "y z.jpg", ".hidden"]) == ["x", "x_2", "y_z", "hidden"]


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((8, 16, 3), np.uint8)
    a[:, :8] = 255  # left half white, 8 rows x 16 columns as stored
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    img = io.read_image(tmp_path / "r.jpg")
    assert img.array.shape == (16, 8, 3)  # displayed upright: 16 rows x 8 columns
    assert img.array[:8].mean() > 0.9 and img.array[8:].mean() < 0.1  # the white half is now on top
    assert "EXIF orientation applied" in img.conversions


def test_outputs_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with io.OutputDir(tmp_path / "o") as out:
            io.save_json(out.path("run.json"), {})
            io.save_png(out.path("x.png"), np.zeros((2, 2)))
    finally:
        os.umask(old)
    assert (tmp_path / "o").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "o" / "run.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "o" / "x.png").stat().st_mode & 0o777 == 0o644
