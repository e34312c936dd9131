"""The procedural faces dataset: deterministic per index and split, disjoint splits, real variety."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brgm_pyro.data import faces as fd
from brgm_pyro.errors import BRGMError


def test_deterministic_and_seeded():
    a = fd.face_image_uint8(3, "train")
    b = fd.face_image_uint8(3, "train")
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fd.face_latent(7, "test"),
                                  np.random.default_rng((fd.TEST_SEED, 7)).standard_normal(fd.FACE_LATENT_DIM))
    # order independent: drawing a batch gives the same image i
    u, x = fd.face_batch([5, 3], "train")
    torch.testing.assert_close(x[1], fd.face_image(3, "train"))
    assert u.shape == (2, fd.FACE_LATENT_DIM) and x.shape == (2, 3, 64, 64)
    assert float(x.min()) >= -1 and float(x.max()) <= 1


def test_splits_are_disjoint():
    assert fd.TRAIN_SEED != fd.TEST_SEED
    tr = fd.face_latents(range(300), "train")
    te = fd.face_latents(range(300), "test")
    # no test code equals any training code (continuous draws: any collision would be a bug)
    d = np.abs(tr[:, None, :] - te[None, :, :]).max(-1)
    assert d.min() > 1e-3
    assert not np.array_equal(fd.face_image_uint8(0, "train"), fd.face_image_uint8(0, "test"))


def test_variety():
    params = [fd.face_params(fd.face_latent(i, "train")) for i in range(400)]
    assert {p.hair_style for p in params} == set(fd.HAIR_STYLES)
    assert {p.nose_style for p in params} == set(fd.NOSE_STYLES)
    glasses = np.mean([p.glasses for p in params])
    assert 0.1 < glasses < 0.3  # P(u > 0.9) = 0.18
    assert 0.35 < np.mean([p.bg_gradient for p in params]) < 0.65
    assert 0.1 < np.mean([p.mouth_open for p in params]) < 0.35
    skins = np.array([p.skin for p in params])
    assert skins[:, 0].max() - skins[:, 0].min() > 100  # light to dark
    widths = np.array([p.face_w for p in params])
    assert widths.min() < 0.5 and widths.max() > 0.58
    # images differ from each other substantially
    imgs = np.stack([fd.draw_face(fd.face_latent(i, "train")) for i in range(20)]).astype(float)
    diffs = [np.abs(imgs[i] - imgs[j]).mean() for i in range(20) for j in range(i)]
    assert min(diffs) > 5


def test_params_are_functions_of_u():
    u = fd.face_latent(0, "train")
    assert fd.face_params(u) == fd.face_params(u.copy())
    on, off = u.copy(), u.copy()
    on[31], off[31] = 2.0, -2.0  # glasses iff u_31 > 0.9
    assert fd.face_params(on).glasses and not fd.face_params(off).glasses
    assert np.abs(fd.draw_face(on).astype(int) - fd.draw_face(off)).max() > 50
    with pytest.raises(BRGMError):
        fd.face_params(np.zeros(3))


def test_dataset_cache_and_errors(tmp_path):
    u, im = fd.make_face_dataset(6, "test", start=2, cache_dir=tmp_path)
    assert u.shape == (6, fd.FACE_LATENT_DIM) and im.shape == (6, 64, 64, 3)
    np.testing.assert_array_equal(im[0], fd.face_image_uint8(2, "test"))
    u2, im2 = fd.make_face_dataset(6, "test", start=2, cache_dir=tmp_path)  # from the cache
    np.testing.assert_array_equal(im, im2)
    ds = fd.FacesDataset(4, "train")
    z, x = ds[1]
    assert z.shape == (fd.FACE_LATENT_DIM,) and x.shape == (3, 64, 64)
    with pytest.raises(BRGMError, match="split"):
        fd.face_latent(0, "val")
    with pytest.raises(BRGMError):
        fd.face_latent(-1)
    grid = fd.face_grid(im, nrow=3)
    assert grid.shape == (2 * 66 + 2, 3 * 66 + 2, 3)
    np.testing.assert_array_equal(fd.to_uint8(fd.to_tensor(im)), im)


def test_feature_mask_marks_the_eyes_and_only_the_features():
    """The mask covers the pupils (computed from the drawing parameters), is a few per cent of the
    image, and the drawing without features equals the full drawing outside it."""
    from brgm_pyro.data.faces import draw_face, draw_face_params, face_latent, face_params, feature_mask

    fracs = []
    for i in range(12):
        u = face_latent(i, "test")
        p = face_params(u)
        full = draw_face(u)
        m = feature_mask(u)
        assert m.dtype == np.bool_ and m.shape == (64, 64)
        np.testing.assert_array_equal(m, feature_mask(u, image=full))
        bare = draw_face_params(p, features=False)
        diff = np.abs(full.astype(int) - bare.astype(int)).max(-1)
        assert diff[~m].max() <= 8 and diff[m].min() > 8
        # the pupil centre of each eye (same geometry as the drawing code)
        fx = p.cx + p.yaw * p.face_w * 0.09
        ey = p.cy - p.face_h * 0.05 + (p.eye_y - 0.46) * p.face_h + p.pitch * p.face_h * 0.04
        for sgn in (-1, 1):
            ex = fx + sgn * p.eye_spacing / 2 * (1 + 0.12 * sgn * p.yaw) + p.yaw * p.eye_size * 0.3
            assert m[int(ey * 64), int(ex * 64)], (i, sgn)
        fracs.append(m.mean())
    assert 0.01 < np.mean(fracs) < 0.12
