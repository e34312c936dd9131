"""Activation checkpointing in the StyleGAN2 synthesis network: the same images and gradients, less
kept for backward, and turned on by the memory budget only when one image's backward does not fit."""

from __future__ import annotations

import pytest
import torch

from brgm_pyro.memory import GRAD_SAFETY, footprint, items_per_chunk, use_checkpointing
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import SuperResolution
from brgm_pyro.models.generators import compute_latent_stats
from brgm_pyro.models.generators.stylegan2 import StyleGAN2Generator


def _G(**kw):
    return StyleGAN2Generator(z_dim=8, w_dim=8, img_resolution=32, img_channels=3, mapping_layers=2,
                              channel_base=128, channel_max=16, seed=0, **kw).eval().double()


@pytest.mark.parametrize("noise_mode", ["const", "random"])
@pytest.mark.parametrize("arch", ["skip", "resnet"])
def test_gradients_identical_with_and_without_checkpointing(noise_mode, arch):
    G = _G(architecture=arch, noise_mode=noise_mode)
    with torch.no_grad():  # non-zero noise strengths, so that the random noise matters
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.3)
    w = torch.randn(2, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = {}
    for ckpt in (False, True):
        G.checkpoint = ckpt
        wv = w.clone().requires_grad_(True)
        torch.manual_seed(5)
        x = G(wv)
        loss = ((x - target) ** 2).sum()
        gw, *gp = torch.autograd.grad(loss, [wv, *G.parameters()], allow_unused=True)
        out[ckpt] = (x.detach(), gw, gp)
    torch.testing.assert_close(out[True][0], out[False][0], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-10, atol=1e-12)
    for a, b in zip(out[True][2], out[False][2]):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_checkpointing_keeps_less_for_backward():
    G = _G().float()
    full, largest = footprint(G, checkpointed=False)
    ckpt, largest2 = footprint(G, checkpointed=True)
    assert largest == largest2 and 0 < ckpt < full
    G.checkpoint = True
    shared = {p.untyped_storage().data_ptr() for p in [*G.parameters(), *G.buffers()]}
    kept: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in shared:
            kept[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        G(torch.zeros(1, G.num_ws, G.w_dim, requires_grad=True))
    assert sum(kept.values()) < full  # outside the blocks only their inputs are kept


def test_budget_turns_checkpointing_on_only_when_needed():
    G = _G().float()
    model = build_model(G, SuperResolution(2), stats=compute_latent_stats(G, num_samples=200), sigma_pixel=0.1)
    full = footprint(G, checkpointed=False)[0]
    model.max_memory = 2 ** 50
    assert not use_checkpointing(model) and not G.checkpoint
    assert items_per_chunk(model, 4) == 4 and not G.checkpoint
    from brgm_pyro.memory import in_use

    model.max_memory = in_use("cpu") + int(full * GRAD_SAFETY * 0.5)  # half an image's backward is free
    assert items_per_chunk(model, 4) >= 1
    assert G.checkpoint and footprint(G)[0] == footprint(G, checkpointed=True)[0] < full
