"""GPU readiness: every method on CUDA, a 1024x1024 config-f StyleGAN2 in fp32 and fp16, NUTS chains on one GPU.

Run whenever a GPU machine is available (it refuses to run without CUDA)::

    python benchmarks/gpu_check.py --out gpu_check.json

1. The bundled generator (``builtin:faces64``, with its perceptual network), x8 super-resolution of 4
   test faces: every registered method (MAP, VI, SGLD, pSGLD, MALA, HMC, NUTS) for a few steps; the
   time per step, peak GPU memory, and that every tensor of the result is on the GPU and finite.
2. A randomly initialised 1024x1024 config-f StyleGAN2 (z = w = 512, 18 x 512 W+, channel_base 32768),
   precision fp32 and fp16 (``num_fp16_res=4``, NVIDIA's config-f setting, conv_clamp 256): MAP steps on
   x16 super-resolution of a batch of 1, time per step and peak memory.
3. NUTS with 4 chains one after another on one GPU (faces64, in-painting), its R-hat over the chains.

Prints one JSON object (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _on_device(result, device: torch.device) -> bool:
    tensors = [result.image, *(result.latents.values())]
    if result.samples is not None:
        tensors.append(result.samples)
    tensors += list((result.draws or {}).values())
    return all(t.device.type == device.type and bool(torch.isfinite(t).all()) for t in tensors)


def _timed(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0, torch.cuda.max_memory_allocated() / 2 ** 20


def every_method(steps: int) -> dict:
    import brgm_pyro as brgm
    from brgm_pyro.data.faces import face_image_uint8
    from brgm_pyro import io

    dev = torch.device("cuda")
    G = brgm.load_generator("builtin:faces64", "cuda")
    x = torch.stack([io.to_model(face_image_uint8(i, "test").astype("float32") / 255) for i in range(4)]).to(dev)
    corr = brgm.make_corruption("superres", factor=8, kernel="bicubic").to(dev)
    y = corr(x)
    model = brgm.build_model(G, corr)
    out = {}
    for name in brgm.METHODS.names():
        kw = {"num_samples": 8}
        if name not in ("map", "vi"):
            kw.update(num_chains=1)
        res, sec, mem = _timed(lambda: brgm.reconstruct(model, y, name, steps=steps, seed=0, **kw))
        done = res.timing.get("steps") or steps
        out[name] = {"seconds": round(sec, 3), "per_step_ms": round(1000 * sec / max(done, 1), 2),
                     "peak_mib": round(mem, 1), "on_gpu_and_finite": _on_device(res, dev), "stopped": res.stopped}
    return out


def stylegan2_1024(steps: int) -> dict:
    from brgm_pyro.models.brgm import build_model
    from brgm_pyro.models.corruptions import SuperResolution
    from brgm_pyro.models.generators.stylegan2 import StyleGAN2Generator
    from brgm_pyro.inference import run_map

    out = {}
    for precision, fp16_res in (("fp32", 0), ("fp16", 4)):
        G = StyleGAN2Generator(img_resolution=1024, num_fp16_res=fp16_res, conv_clamp=256 if fp16_res else None,
                               precision=precision, seed=0).eval().to("cuda")
        corr = SuperResolution(16, "bicubic")
        with torch.no_grad():
            y = corr(G(G.mapping(torch.randn(1, G.z_dim, device="cuda"))[:, None].expand(-1, G.num_ws, -1)))
        model = build_model(G, corr)
        res, sec, mem = _timed(lambda m=model, obs=y: run_map(m, obs, steps=steps, progress=False))
        out[precision] = {"per_step_ms": round(1000 * sec / steps, 1), "peak_mib": round(mem, 1),
                          "on_gpu_and_finite": _on_device(res, torch.device("cuda"))}
        del G, model, res
        torch.cuda.empty_cache()
    return out


def nuts_chains(steps: int, chains: int = 4) -> dict:
    import brgm_pyro as brgm
    from brgm_pyro import io
    from brgm_pyro.data.faces import face_image_uint8
    from brgm_pyro.diagnostics import diagnose
    from brgm_pyro.inference.arviz_io import to_inference_data

    G = brgm.load_generator("builtin:faces64", "cuda")
    x = io.to_model(face_image_uint8(0, "test").astype("float32") / 255)[None].cuda()
    m = torch.ones(64, 64, dtype=torch.bool)
    m[20:40, 16:48] = False
    corr = brgm.make_corruption("inpaint", mask=m).cuda()
    model = brgm.build_model(G, corr)
    res, sec, mem = _timed(lambda: brgm.reconstruct(model, corr(x), "nuts", steps=steps, num_samples=steps,
                                                      num_chains=chains, seed=0))
    rep = diagnose(to_inference_data(res, model, corr(x)))
    return {"chains": chains, "seconds": round(sec, 1), "peak_mib": round(mem, 1), "max_r_hat": rep["max_r_hat"],
            "min_ess_bulk": rep["min_ess_bulk"], "on_gpu_and_finite": _on_device(res, torch.device("cuda"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check runs on a GPU machine")
    rep = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "every_method_faces64": every_method(a.steps), "stylegan2_1024_config_f": stylegan2_1024(a.steps),
           "nuts_chains_one_gpu": nuts_chains(a.steps)}
    text = json.dumps(rep, indent=2)
    print(text)
    if a.out:
        from brgm_pyro.io import write_text_atomic

        write_text_atomic(a.out, text + "\n")


if __name__ == "__main__":
    main()
