"""ArviZ 0.23 and 1.x give the same files and the same diagnostics (run on both lines: .ci/py312_arviz1.sh).

The fixture ``posterior_a4703da.nc`` was written by the previous release (commit a4703da, ArviZ
0.23.4): ``brgm reconstruct low.png --generator builtin:conv16 --method mala --chains 2
--num-samples 8 --steps 10 --seed 1`` on a seeded random 2x2 RGB image.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from brgm_pyro import azcompat
from brgm_pyro.cli import app
from brgm_pyro.diagnostics import diagnose
from brgm_pyro.errors import BRGMError
from brgm_pyro.inference.arviz_io import read_inference_data

FIXTURE = Path(__file__).parent / "fixtures" / "posterior_a4703da.nc"
# diagnostics of the fixture computed with ArviZ 0.23.4 (name, R-hat, bulk ESS, tail ESS, MCSE of the mean);
# ArviZ 1.3 gives the same numbers (measured)
PREV = [("lp", 1.4718207637, 19.26591972, 19.26591972, 1.4451978294),
        ("log_lik", 1.1776253148, 19.26591972, 19.26591972, 0.4435634562),
        ("mean_intensity", 1.2871644342, 19.26591972, 19.26591972, 0.0026371636),
        ("pc1", 2.0228158948, 19.26591972, 19.26591972, 0.0919794286),
        ("pc2", 2.391282424, 19.26591972, 19.26591972, 0.0771398303),
        ("pc3", 1.3914329039, 19.26591972, 19.26591972, 0.0684573895)]


def test_previous_release_file_reads_and_diagnoses_the_same():
    idata = read_inference_data(FIXTURE)
    assert sorted(azcompat.group_names(idata)) == ["constant_data", "log_likelihood", "observed_data", "posterior",
                                                   "sample_stats"]
    post = azcompat.group(idata, "posterior")
    assert post["w"].shape == (2, 8, 1, 6, 16) and post.attrs["method"] == "mala"
    rows = diagnose(idata)["rows"]
    got = [(r["name"], r["r_hat"], r["ess_bulk"], r["ess_tail"], r["mcse_mean"]) for r in rows]
    assert [g[0] for g in got] == [p[0] for p in PREV]
    # 1e-6: the PC summaries come from an SVD whose summation order follows the BLAS threads (3e-7 seen)
    np.testing.assert_allclose([g[1:] for g in got], [p[1:] for p in PREV], rtol=1e-6)


def test_brgm_diagnose_on_a_previous_release_file(tmp_path):
    nc = tmp_path / "posterior.nc"
    shutil.copy(FIXTURE, nc)
    res = CliRunner().invoke(app, ["diagnose", str(nc)])
    assert res.exit_code == 0, (res.output, res.stderr)
    assert "method mala: 2 chain(s) x 8 draws" in res.output and "max r_hat 2.391" in res.output
    assert {"trace.png", "rank.png", "diagnostics.json"} <= {p.name for p in tmp_path.iterdir()}
    rep = json.loads((tmp_path / "diagnostics.json").read_text())
    assert rep["max_r_hat"] == pytest.approx(2.391282424, rel=1e-7)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic writes left nothing


def test_round_trip_on_this_line(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 5, 3)).astype(np.float32)
    idata = azcompat.from_dict({"posterior": {"w": w}, "sample_stats": {"lp": rng.standard_normal((2, 5))}},
                               dims={"w": ["k"]})
    azcompat.add_group(idata, "observed_data", xr.Dataset({"y": (("pix",), np.arange(4.0))}))
    azcompat.update_attrs(idata, {"method": "test"})
    for compress in (False, True):
        azcompat.to_netcdf(idata, tmp_path / f"a{compress}.nc", compress=compress)
        back = azcompat.from_netcdf(tmp_path / f"a{compress}.nc")
        assert sorted(azcompat.group_names(back)) == ["observed_data", "posterior", "sample_stats"]
        np.testing.assert_array_equal(azcompat.group(back, "posterior")["w"].values, w)
        assert azcompat.group(back, "observed_data").attrs["method"] == "test"


def test_tail_ess_uses_the_5_95_quantiles_on_both_lines():
    rng = np.random.default_rng(7)
    a = np.cumsum(rng.standard_normal((4, 200)), 1) * 0.1 + rng.standard_t(3, (4, 200))
    ds = xr.Dataset({"f": (("chain", "draw"), a)})
    # ArviZ 0.23's default tail ESS (5 % / 95 %); ArviZ 1.x's default (11 % / 89 %) gives 18.24
    assert float(azcompat.ess(ds, "tail")["f"]) == pytest.approx(62.96369623514535, rel=1e-9)
    assert float(azcompat.ess(ds, "bulk")["f"]) == pytest.approx(10.241990212125836, rel=1e-9)
    assert float(azcompat.rhat(ds)["f"]) == pytest.approx(1.3143168615715795, rel=1e-9)


def test_not_a_posterior_file_is_one_line(tmp_path):
    bad = tmp_path / "x.nc"
    bad.write_bytes(b"not netcdf")
    with pytest.raises(BRGMError, match="cannot read"):
        read_inference_data(bad)
