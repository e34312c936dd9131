"""Dataset runs: one folder per image, a manifest, resume after SIGKILL, 2 torchrun ranks = 1 process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from brgm_pyro.cli import app

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--generator", "builtin:conv16", "--task", "superres", "--factor", "4", "--simulate", "--batch-size", "2",
        "--threads", "1", "-q"]
N = 5  # 3 batches of 2, 2, 1


def _faces(d: Path) -> Path:
    d.mkdir()
    for i in range(N):
        y, x = np.mgrid[0:16, 0:16] / 16
        img = np.stack([0.5 + 0.4 * np.sin((3 + i) * x), 0.5 + 0.4 * np.cos((2 + i) * y), 0.4 + 0.1 * i * x], -1)
        Image.fromarray((img * 255).astype(np.uint8)).save(d / f"face_{i}.png")
    return d


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _files(out: Path) -> dict[str, bytes]:
    """Every PNG of every image folder (the results that must not depend on how the work was shared)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/**/*.png"))}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one in-process run over the whole directory."""
    base = tmp_path_factory.mktemp("ds")
    src = _faces(base / "faces")
    out = base / "one"
    res = CliRunner().invoke(app, ["reconstruct", str(src), *ARGS, "--steps", "40", "--out", str(out)])
    assert res.exit_code == 0, (res.output, res.stderr)
    return src, out


def test_one_folder_per_image_manifest_and_summary(single):
    src, out = single
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == [f"face_{i}" for i in range(N)]
    for n in names:
        assert {"reconstruction.png", "observed.png", "truth.png", "result.json"} <= {p.name for p in (out / n).iterdir()}
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["name"] for r in rows) == names and [r["batch"] for r in rows] == [0, 0, 1, 1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] == N and summary["complete"]
    assert summary["mean_psnr"] == pytest.approx(np.mean([r["psnr"] for r in rows]))
    again = CliRunner().invoke(app, ["reconstruct", str(src), *ARGS, "--steps", "40", "--out", str(out)])
    assert again.exit_code == 0 and "0 image(s) written, 5 already finished" in again.output
    other = CliRunner().invoke(app, ["reconstruct", str(src), *ARGS, "--steps", "41", "--out", str(out)])
    assert other.exit_code == 2 and "other settings (steps)" in other.stderr


def test_resume_after_sigkill_gives_the_same_results(single, tmp_path):
    src, ref = single
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "brgm_pyro", "reconstruct", str(src), *ARGS, "--steps", "40", "--out", str(out)]
    # slow the run down (many more steps) only to have time to kill it between two batches: a run
    # with other settings is refused, so the killed run uses the reference's settings and a delay hook
    p = subprocess.Popen(cmd, env={**_env(), "BRGM_TEST_BATCH_DELAY_S": "3"}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    deadline = time.time() + 240
    manifest = out / "manifest.jsonl"
    while time.time() < deadline and p.poll() is None:
        if manifest.is_file() and manifest.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    done = [json.loads(line)["name"] for line in manifest.read_text().splitlines()]
    assert 2 <= len(done) < N
    visible = sorted(q.name for q in out.iterdir() if q.is_dir() and not q.name.startswith("."))
    assert set(visible) >= set(done) and all((out / n / "result.json").is_file() for n in visible)
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{N - len(visible)} image(s) written, {len(visible)} already finished" in r.stdout
    assert not [q for q in out.iterdir() if q.name.startswith(".") and "partial" in q.name]
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert sorted(r["name"] for r in rows) == [f"face_{i}" for i in range(N)]  # each once
    assert _files(out) == _files(ref)


def test_two_torchrun_ranks_equal_one_process(single, tmp_path):
    src, ref = single
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "brgm_pyro",
           "reconstruct", str(src), *ARGS, "--steps", "40", "--out", str(out)]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {(x["batch"], x["rank"]) for x in rows} == {(0, 0), (1, 1), (2, 0)}  # batch k on rank k mod 2
    assert _files(out) == _files(ref)
    assert json.loads((out / "summary.json").read_text())["complete"]


def test_ctrl_c_in_a_batch_stops_the_run_and_a_rerun_recomputes_it(tmp_path, monkeypatch):
    """Ctrl-C inside inference (the engine returns ``stopped = "interrupted ..."``): the interrupted
    batch is not recorded as finished, the run stops with status 130, summary.json says not
    complete, and a rerun of the same command computes the missing images."""
    from brgm_pyro.pipeline import core

    src = _faces(tmp_path / "faces")
    out = tmp_path / "out"
    args = ["reconstruct", str(src), *ARGS, "--steps", "3", "--out", str(out)]
    real, calls = core.reconstruct, []

    def ctrl_c_in_second_batch(*a, **kw):
        res = real(*a, **kw)
        calls.append(1)
        if len(calls) == 2:
            res.stopped = "interrupted (Ctrl-C): kept the last completed step"
        return res

    monkeypatch.setattr(core, "reconstruct", ctrl_c_in_second_batch)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 130, (res.output, res.stderr)
    assert len(calls) == 2  # the run stopped: batch 2 was never started
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["name"] for r in rows) == ["face_0", "face_1"]
    assert not (out / "face_2").exists() and not (out / "face_3").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["complete"] and summary["finished"] == 2 and summary["interrupted"]
    monkeypatch.setattr(core, "reconstruct", real)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, (again.output, again.stderr)
    assert "3 image(s) written, 2 already finished" in again.output
    assert json.loads((out / "summary.json").read_text())["complete"]


# A kill *inside* a batch, at two places, by a SIGKILL the process sends itself from a patched
# function: after face_2's folder is renamed into place but before its manifest line (the manifest
# repair), and while face_3's folder is half-built (a hidden partial folder). Batch 1 (face_2,
# face_3) is then partial: the rerun recomputes it and writes face_3 only.
_KILLER = """
import os, signal, sys
from brgm_pyro.pipeline import dataset, outputs
where = sys.argv[1]
if where == "before_manifest_line":
    real = dataset.append_manifest
    def append(out, row):
        if row.get("name") == "face_2":
            os.kill(os.getpid(), signal.SIGKILL)
        real(out, row)
    dataset.append_manifest = append
else:
    real = outputs.write_image_outputs
    def write(od, *a, **k):
        files = real(od, *a, **k)
        if "face_3" in str(od.target):
            os.kill(os.getpid(), signal.SIGKILL)
        return files
    outputs.write_image_outputs = write
from brgm_pyro.cli import main
sys.argv = ["brgm"] + sys.argv[2:]
main()
"""


@pytest.mark.parametrize("where", ["before_manifest_line", "inside_image_folder"])
def test_kill_inside_a_batch_repairs_and_recomputes_the_partial_batch(single, tmp_path, where):
    src, ref = single
    out = tmp_path / "killed"
    args = ["reconstruct", str(src), *ARGS, "--steps", "40", "--out", str(out)]
    p = subprocess.run([sys.executable, "-c", _KILLER, where, *args], env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    logged = [json.loads(line)["name"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    visible = sorted(q.name for q in out.iterdir() if q.is_dir() and not q.name.startswith("."))
    partial = [q.name for q in out.iterdir() if q.name.startswith(".face_3") and "partial" in q.name]
    if where == "before_manifest_line":
        assert logged == ["face_0", "face_1"] and visible == ["face_0", "face_1", "face_2"] and not partial
    else:
        assert logged == ["face_0", "face_1", "face_2"] and visible == logged and len(partial) == 1
    r = subprocess.run([sys.executable, "-m", "brgm_pyro", *args], env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 image(s) written, 3 already finished" in r.stdout  # face_3 of the partial batch, face_4
    assert not [q for q in out.iterdir() if q.name.startswith(".") and "partial" in q.name]
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(x["name"] for x in rows) == [f"face_{i}" for i in range(N)]  # each once
    assert [x["name"] for x in rows if x.get("repaired")] == (["face_2"] if where == "before_manifest_line" else [])
    assert _files(out) == _files(ref)
    assert json.loads((out / "summary.json").read_text())["complete"]


def test_csv_manifest_input_equals_the_directory_run(single, tmp_path):
    """A .csv with an 'image' column (paths relative to the CSV) lists the same items in its row
    order: same names, batches and results as the directory run."""
    src, ref = single
    csv_path = src.parent / "list.csv"
    csv_path.write_text("image\n" + "".join(f"faces/face_{i}.png\n" for i in range(N)))
    out = tmp_path / "from_csv"
    res = CliRunner().invoke(app, ["reconstruct", str(csv_path), *ARGS, "--steps", "40", "--out", str(out)])
    assert res.exit_code == 0, (res.output, res.stderr)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(x["name"], x["batch"]) for x in rows] == [(f"face_{i}", i // 2) for i in range(N)]
    assert _files(out) == _files(ref)


def test_an_out_that_is_not_a_dataset_run_is_refused(single, tmp_path):
    src, _ = single
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    res = CliRunner().invoke(app, ["reconstruct", str(src), *ARGS, "--steps", "40", "--out", str(out)])
    assert res.exit_code == 2 and "is not a dataset run" in res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing written


def test_out_inside_the_input_folder_resumes(tmp_path):
    src = _faces(tmp_path / "faces")
    args = ["reconstruct", str(src), *ARGS, "--steps", "2", "--out", str(src / "results")]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, (first.output, first.stderr)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "0 image(s) written, 5 already finished" in again.output, again.output


def test_ctrl_c_inside_mcmc_of_a_batch_is_an_interruption_not_an_error(tmp_path, monkeypatch):
    """Pyro's MCMC keeps no partial chain: Ctrl-C in a batch's MALA run stops the dataset run with status
    130 and an interrupted summary (not exit 2 as a bad input), and a rerun finishes the images."""
    from pyro.infer import MCMC

    from brgm_pyro.pipeline import core

    src = _faces(tmp_path / "faces")
    out = tmp_path / "out"
    args = ["reconstruct", str(src), *ARGS, "--method", "mala", "--steps", "4", "--num-samples", "4", "--out", str(out)]
    real, real_rec, batches = MCMC.run, core.reconstruct, []

    def count_batches(*a, **kw):
        batches.append(1)
        return real_rec(*a, **kw)

    def ctrl_c_in_second_batch(self, *a, **kw):
        if len(batches) == 2:  # batch 0 finished; Ctrl-C inside batch 1's chain
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(core, "reconstruct", count_batches)
    monkeypatch.setattr(MCMC, "run", ctrl_c_in_second_batch)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 130, (res.output, res.stderr)
    assert "interrupted" in res.stderr and "Traceback" not in res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and not summary["complete"] and summary["finished"] == 2
    assert not (out / "face_2").exists()
    monkeypatch.setattr(MCMC, "run", real)
    monkeypatch.setattr(core, "reconstruct", real_rec)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, (again.output, again.stderr)
    assert json.loads((out / "summary.json").read_text())["finished"] == N


def test_each_batch_draws_its_own_simulated_noise(tmp_path):
    """Two identical images in two batches must not get the same noise draw (coverage pooled over a
    dataset would otherwise average one draw); batch 0 keeps --seed, and result.json records each seed."""
    from brgm_pyro.pipeline.dataset import batch_seed

    src = tmp_path / "same"
    src.mkdir()
    img = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    for name in ("a", "b"):
        Image.fromarray(img).save(src / f"{name}.png")
    out = tmp_path / "out"
    args = ["--generator", "builtin:conv16", "--task", "deblur", "--noise-sigma", "0.1", "--simulate",
            "--batch-size", "1", "--threads", "1", "-q"]  # a and b in batches 0 and 1
    res = CliRunner().invoke(app, ["reconstruct", str(src), *args, "--steps", "2", "--seed", "3", "--out", str(out)])
    assert res.exit_code == 0, (res.output, res.stderr)
    obs = {n: np.asarray(Image.open(out / n / "observed.png")) for n in ("a", "b")}
    assert not np.array_equal(obs["a"], obs["b"])
    seeds = [json.loads((out / n / "result.json").read_text())["seed_of_batch"] for n in ("a", "b")]
    assert seeds == [3, batch_seed(3, 1)] and seeds[0] != seeds[1]


def test_dataset_run_takes_particles_like_a_single_run(tmp_path):
    """--particles reaches SMC in every batch (dataset.json records N, each image's stage tables have N
    particles' ESS), a resume with another N is refused, and --particles with a method that has no
    population is one line."""
    src = _faces(tmp_path / "faces")
    out = tmp_path / "smc"

    def args(n: int, method: str = "smc") -> list[str]:
        return ["reconstruct", str(src), *ARGS, "--method", method, "--particles", str(n), "--num-samples", "2",
                "--no-percept", "--out", str(out)] + (["--chains", "2", "--steps", "1"] if method == "smc" else [])

    res = CliRunner().invoke(app, args(6))
    assert res.exit_code == 0, (res.output, res.stderr)
    assert json.loads((out / "dataset.json").read_text())["settings"]["particles"] == 6
    for i in range(N):
        inf = json.loads((out / f"face_{i}" / "result.json").read_text())["inference_of_batch"]
        assert len(inf["log_evidence_runs"]) == 2 and inf["log_evidence_se_genealogy"] is not None
        assert max(max(s["ess"]) for s in inf["smc_stages"]) <= 6.0 + 1e-9  # ESS <= N = 6
    other = CliRunner().invoke(app, args(8))
    assert other.exit_code == 2 and "particles" in other.stderr
    bad = CliRunner().invoke(app, args(6, "map")[:-2] + ["--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--particles" in bad.stderr and "Traceback" not in bad.stderr
