"""Per-step cost of our Pyro MAP and VI against a hand-written PyTorch loss of the same terms.

Both sides use the same generator, corruption, observation, prior statistics and optimiser
(Adam); the hand-written side computes the paper's Eq. 6 terms directly. The ratio (ours /
hand-written, medians over repeats, interleaved so that machine noise hits both alike) is the
price of writing the model as a Pyro program.

    python benchmarks/bench_step_overhead.py [--generator conv|stylegan64] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from brgm_pyro.inference.engine import ELBOTerms
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import SuperResolution


def make_generator(name: str):
    if name == "conv":
        from brgm_pyro.models.generators import ConvGenerator

        return ConvGenerator(img_resolution=64, img_channels=3, w_dim=64, channels=32)
    if name == "stylegan64":
        from brgm_pyro.models.generators.stylegan2 import StyleGAN2Generator

        return StyleGAN2Generator(z_dim=128, w_dim=128, img_resolution=64, img_channels=3,
                                  mapping_layers=4, channel_base=2048, channel_max=128)
    if name.startswith("builtin:") or name.endswith((".safetensors", ".pkl", ".pt")):
        from brgm_pyro.models.generators.loading import load_generator

        return load_generator(name)
    raise SystemExit(f"unknown generator {name}")


def hand_written(model, y, batch, kappa, sigma_pixel, particles):
    """The same objective without Pyro: Eq. 6 / 2 (MAP) or the mean-field ELBO (VI)."""
    prior = model.prior.base.distribution().base_dist
    mu, sd = prior.loc, prior.scale
    w_map = model.init_latents(batch).clone().requires_grad_(True)
    loc = model.init_latents(batch).clone().requires_grad_(True)
    rho = torch.full_like(loc, math.log(math.expm1(0.05)), requires_grad=True)
    iu = torch.triu_indices(model.generator.num_ws, model.generator.num_ws, 1)

    def neg_log_joint(w):
        u = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        cos = (u @ u.transpose(-1, -2))[..., iu[0], iu[1]].sum(-1)
        pred = model.corruption(model.generator(w))
        return (0.5 * (((w - mu) / sd) ** 2).sum((-1, -2)) - kappa * cos
                + 0.5 * ((pred - y) ** 2).sum((-1, -2, -3)) / sigma_pixel ** 2).sum()

    opt_map = torch.optim.Adam([w_map], lr=0.01)
    opt_vi = torch.optim.Adam([loc, rho], lr=0.01)

    def map_step():
        opt_map.zero_grad()
        neg_log_joint(w_map).backward()
        opt_map.step()

    def vi_step():
        opt_vi.zero_grad()
        scale = torch.nn.functional.softplus(rho)
        w = loc + scale * torch.randn(particles, *loc.shape)
        entropy = scale.log().sum()
        alpha, beta = 0.1, 0.95
        s = scale / sd
        hyper = (-(alpha + 1) * s.log() - beta / s).sum()
        (neg_log_joint(w) / particles - entropy - hyper).backward()
        opt_vi.step()

    return map_step, vi_step


def ours(model, y, particles):
    import pyro
    from pyro.infer.autoguide import AutoDelta, AutoNormal
    from pyro.infer.autoguide.initialization import init_to_value

    init = init_to_value(values={"w": model.init_latents(y.shape[0])})
    steps = []
    for guide_cls, kw, P, ent, hyper in [(AutoDelta, {}, 1, False, None),
                                         (AutoNormal, {"init_scale": 0.05}, particles, True, (0.1, 0.95))]:
        q = guide_cls(model, init_loc_fn=init, **kw)
        q(y)
        elbo = ELBOTerms(model, q, num_particles=P, entropy=ent, hyperprior=hyper)
        params = list(q.parameters())
        opt = torch.optim.Adam(params, lr=0.01)

        def step(elbo=elbo, opt=opt, params=params):
            opt.zero_grad()
            loss, vec = elbo(y)
            loss.backward()
            opt.step()
            vec.detach().tolist()  # the per-term history our loop records each step

        steps.append(step)
    return steps


def timeit(fn, n):
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--generator", default="stylegan64")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--particles", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import pyro

    G = make_generator(args.generator)
    kappa, sp = 2.0, 0.05
    model = build_model(G, SuperResolution(8, "bicubic"), prior="brgm", kappa=kappa, sigma_pixel=sp)
    with torch.no_grad():
        y = model.predict(model.init_latents(args.batch) + 0.1 * torch.randn(args.batch, *G.latent_shape))
    with pyro.get_param_store().scope():
        our_map, our_vi = ours(model, y, args.particles)
        ref_map, ref_vi = hand_written(model, y, args.batch, kappa, sp, args.particles)
        for f in (our_map, our_vi, ref_map, ref_vi):  # warm-up
            timeit(f, 3)
        res = {k: [] for k in ("our_map", "ref_map", "our_vi", "ref_vi")}
        for _ in range(args.repeats):  # interleaved
            for k, f in (("our_map", our_map), ("ref_map", ref_map), ("our_vi", our_vi), ("ref_vi", ref_vi)):
                res[k].append(statistics.median(timeit(f, args.steps)))
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"generator={args.generator} image={G.img_resolution}x{G.img_resolution} L={G.num_ws} d={G.w_dim} "
          f"batch={args.batch} particles(VI)={args.particles} threads={args.threads} "
          f"(median of {args.repeats} x {args.steps} steps)")
    print(f"{'':6s} {'ours (ms)':>10s} {'hand-written (ms)':>18s} {'ratio':>7s}")
    for m in ("map", "vi"):
        o, r = med[f"our_{m}"] * 1e3, med[f"ref_{m}"] * 1e3
        print(f"{m.upper():6s} {o:10.2f} {r:18.2f} {o / r:7.3f}")


if __name__ == "__main__":
    main()
