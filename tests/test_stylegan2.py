"""StyleGAN2Generator against an independent, literal re-statement of NVIDIA's formulas.

``reference_generate`` below works on a flat dict of tensors under NVIDIA's names
(``synthesis.b{r}.conv0.weight``, ``mapping.fc{i}.bias``, ...). It follows stylegan2-ada-pytorch
step by step where our model takes shortcuts: fused per-sample (grouped) modulated convolution
with the demodulation computed on the full (B, O, I, k, k) weight, transposed convolution written as
zero insertion + flipped correlation, and ``upfirdn2d`` written as NVIDIA's reference
implementation (zero insertion, pad, flip filter, depthwise convolution). ``tests/test_nvidia_pickle.py``
loads this module by path and reuses it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.generators.stylegan2 import StyleGAN2Generator

torch.set_num_threads(1)
SQRT2 = math.sqrt(2.0)


# ----------------------------------------------------------------------------------------------
# Reference (NVIDIA's formulas, restated independently)
# ----------------------------------------------------------------------------------------------
def ref_filter():
    f = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    f = f[:, None] * f[None, :]
    return f / f.sum()


def ref_upfirdn2d(x, f, up=1, pad=(0, 0, 0, 0), gain=1.0):
    """NVIDIA's _upfirdn2d_ref for 2-D f, down = 1; pad = (x0, x1, y0, y1) >= 0."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H, 1, W, 1)
    x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
    x = x.reshape(B, C, H * up, W * up)
    x = F.pad(x, list(pad))
    f = (f * gain ** (f.ndim / 2)).to(x.dtype).flip([0, 1])
    f = f[None, None].repeat(C, 1, 1, 1)
    return F.conv2d(x, f, groups=C)


def ref_fc(x, st, name, lr=1.0, act="linear"):
    w, b = st[name + ".weight"], st[name + ".bias"]
    x = x @ (w * (lr / math.sqrt(w.shape[1]))).t() + b * lr
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2) * SQRT2
    return x


def ref_modconv(x, weight, styles, demod, up):
    B = x.shape[0]
    O, I, k, _ = weight.shape
    w = weight[None] * styles[:, None, :, None, None]  # (B, O, I, k, k)
    if demod:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()[:, :, None, None, None]
    xg = x.reshape(1, B * I, *x.shape[2:])
    wg = w.reshape(B * O, I, k, k)
    if up == 1:
        y = F.conv2d(xg, wg, padding=k // 2, groups=B)
    else:
        # transposed stride-2 convolution == zero insertion (H -> 2H-1) + correlation with the
        # spatially flipped kernel, padding k-1; then the [1,3,3,1] filter with padding 1, gain 4.
        H, W = xg.shape[2:]
        z = xg.new_zeros(1, B * I, 2 * H - 1, 2 * W - 1)
        z[:, :, ::2, ::2] = xg
        y = F.conv2d(z, wg.flip([2, 3]), padding=k - 1, groups=B)
        y = ref_upfirdn2d(y, ref_filter(), pad=(1, 1, 1, 1), gain=4)
    return y.reshape(B, O, *y.shape[2:])


def ref_layer(x, w, st, name, up, noise_mode, conv_clamp, gain=1.0):
    """SynthesisLayer.forward: modconv, noise, bias_act(lrelu, gain=sqrt(2)*gain, clamp=conv_clamp*gain)."""
    styles = ref_fc(w, st, name + ".affine")
    x = ref_modconv(x, st[name + ".weight"], styles, True, up)
    if noise_mode == "const":
        x = x + st[name + ".noise_const"] * st[name + ".noise_strength"]
    x = x + st[name + ".bias"].reshape(1, -1, 1, 1)
    x = F.leaky_relu(x, 0.2) * (SQRT2 * gain)
    if conv_clamp is not None:
        x = x.clamp(-conv_clamp * gain, conv_clamp * gain)  # NVIDIA: conv_clamp * gain, gain = residual gain
    return x


def ref_skip(x, st, name):
    """Conv2dLayer(kernel 1, bias=False, up=2) called with gain sqrt(1/2): conv2d_resample's transposed
    stride-2 convolution (zero insertion, H -> 2H-1) with weight * 1/sqrt(in), then upfirdn2d with
    padding 2 and gain 4, then bias_act('linear', gain=sqrt(0.5)), no clamp."""
    w = st[name + ".weight"]
    B, C, H, W = x.shape
    z = x.new_zeros(B, C, 2 * H - 1, 2 * W - 1)
    z[:, :, ::2, ::2] = x
    y = F.conv2d(z, w * (1 / math.sqrt(w.shape[1])))
    y = ref_upfirdn2d(y, ref_filter(), pad=(2, 2, 2, 2), gain=4)
    return y * math.sqrt(0.5)


def ref_torgb(x, w, st, name, conv_clamp):
    weight = st[name + ".weight"]
    styles = ref_fc(w, st, name + ".affine") / math.sqrt(weight.shape[1] * weight.shape[2] ** 2)
    x = ref_modconv(x, weight, styles, False, 1) + st[name + ".bias"].reshape(1, -1, 1, 1)
    if conv_clamp is not None:
        x = x.clamp(-conv_clamp, conv_clamp)
    return x


def reference_synthesis(st, ws, resolution, noise_mode="const", conv_clamp=None, architecture="skip"):
    """ws (B, L, d) -> image, from NVIDIA-named tensors ``st`` (prefix ``synthesis.``).

    SynthesisBlock.forward: 'skip' has a ToRGB in every block, 'orig' and 'resnet' only in the last;
    'resnet' adds skip(x) to conv1 run with gain sqrt(1/2). Latents: block r takes ws[idx : idx +
    num_conv + num_torgb], then idx += num_conv."""
    res = [2 ** i for i in range(2, int(math.log2(resolution)) + 1)]
    x = img = None
    idx = 0
    for r in res:
        p = f"synthesis.b{r}"
        if r == 4:
            x = st[p + ".const"][None].repeat(ws.shape[0], 1, 1, 1)
            x = ref_layer(x, ws[:, idx], st, p + ".conv1", 1, noise_mode, conv_clamp)
            n_conv = 1
        elif architecture == "resnet":
            y = ref_skip(x, st, p + ".skip")
            x = ref_layer(x, ws[:, idx], st, p + ".conv0", 2, noise_mode, conv_clamp)
            x = ref_layer(x, ws[:, idx + 1], st, p + ".conv1", 1, noise_mode, conv_clamp, math.sqrt(0.5))
            x = y + x
            n_conv = 2
        else:
            x = ref_layer(x, ws[:, idx], st, p + ".conv0", 2, noise_mode, conv_clamp)
            x = ref_layer(x, ws[:, idx + 1], st, p + ".conv1", 1, noise_mode, conv_clamp)
            n_conv = 2
        if img is not None:
            img = ref_upfirdn2d(img, ref_filter(), up=2, pad=(2, 1, 2, 1), gain=4)
        if architecture == "skip" or r == resolution:
            y = ref_torgb(x, ws[:, idx + n_conv], st, p + ".torgb", conv_clamp)
            img = y if img is None else img + y
        idx += n_conv
    return img


def ref_normalize(x):
    return x * (x.square().mean(1, keepdim=True) + 1e-8).rsqrt()


def reference_mapping(st, z, num_layers, lr=0.01, c=None):
    """MappingNetwork.forward: normalize(z), [concat normalize(embed(c)) (linear dense, lr 1)], layers."""
    x = ref_normalize(z)
    if c is not None:
        x = torch.cat([x, ref_normalize(ref_fc(c, st, "mapping.embed"))], dim=1)
    for i in range(num_layers):
        x = ref_fc(x, st, f"mapping.fc{i}", lr, "lrelu")
    return x


def to_nvidia_names(state):
    """Our state dict -> NVIDIA's names (only the two prefixes and w_avg differ)."""
    out = {}
    for k, v in state.items():
        k = k.replace("synthesis_network.", "synthesis.").replace("mapping_network.", "mapping.")
        out["mapping.w_avg" if k == "w_avg" else k] = v.detach().clone()
    return out


def randomize(G, seed=1):
    """Give every parameter and buffer non-trivial values (biases, noise strengths non-zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(G.named_parameters()) + list(G.named_buffers()):
            scale = 1.0 if name.endswith(("weight", "const", "noise_const")) else 0.3
            p.copy_(p + scale * torch.randn(p.shape, generator=g) if name.endswith("affine.bias")
                    else scale * torch.randn(p.shape, generator=g) / (0.01 if "mapping" in name else 1))
    return G


def small(res=16, ch=3, **kw):
    kw = dict(dict(z_dim=8, w_dim=8, img_resolution=res, img_channels=ch, mapping_layers=2,
                   channel_base=64, channel_max=8), **kw)
    return StyleGAN2Generator(**kw)


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("res,ch,clamp", [(4, 3, None), (16, 3, None), (32, 1, 0.5)])
def test_synthesis_matches_reference(res, ch, clamp):
    G = randomize(small(res, ch, conv_clamp=clamp)).double()
    ws = torch.randn(3, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(2)).double()
    st = to_nvidia_names(G.state_dict())
    for mode in ("const", "none"):
        G.noise_mode = mode
        ours = G(ws)
        ref = reference_synthesis(st, ws, res, mode, clamp)
        assert ours.shape == (3, ch, res, res)
        assert ref.abs().max() > 0.1  # a non-trivial image
        assert (ours - ref).abs().max().item() < 1e-9
    if clamp is not None:  # the clamp is active, so its placement was tested
        assert (ref.abs() >= clamp - 1e-9).any()


@pytest.mark.parametrize("arch,res,ch,clamp", [("orig", 16, 3, None), ("resnet", 16, 1, None),
                                                ("resnet", 32, 3, 0.6), ("orig", 8, 1, 0.5)])
def test_architectures_match_reference(arch, res, ch, clamp):
    G = randomize(small(res, ch, conv_clamp=clamp, architecture=arch)).double()
    assert G.config()["architecture"] == arch
    assert not hasattr(G.synthesis_network.b4, "torgb") and hasattr(getattr(G.synthesis_network, f"b{res}"), "torgb")
    assert hasattr(G.synthesis_network.b8, "skip") == (arch == "resnet")
    ws = torch.randn(2, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(2)).double()
    st = to_nvidia_names(G.state_dict())
    for mode in ("const", "none"):
        G.noise_mode = mode
        ref = reference_synthesis(st, ws, res, mode, clamp, arch)
        assert ref.abs().max() > 0.1
        assert (G(ws) - ref).abs().max().item() < 1e-9
    if clamp is not None and arch == "resnet":  # the clamp is reached, so its placement is tested
        b8 = G.synthesis_network.b8
        x = G.synthesis_network.b4.conv1(G.synthesis_network.b4.const[None].repeat(2, 1, 1, 1), ws[:, 0], "none")
        assert x.abs().max() >= clamp - 1e-9
        x = b8.conv1(b8.conv0(x, ws[:, 1], "none"), ws[:, 2], "none", gain=math.sqrt(0.5))
        assert x.abs().max() >= clamp * math.sqrt(0.5) - 1e-9  # resnet conv1: conv_clamp * sqrt(1/2)


def test_conditional_mapping_matches_reference():
    G = randomize(small(8, c_dim=5, embed_features=6, layer_features=7)).double()
    assert G.mapping_network.embed.weight.shape == (6, 5) and G.mapping_network.fc0.weight.shape == (7, 14)
    z = torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(4)).double()
    c = F.one_hot(torch.tensor([0, 3, 4, 3]), 5).double()
    ref = reference_mapping(to_nvidia_names(G.state_dict()), z, 2, c=c)
    assert (G.mapping(z, c).double() - ref).abs().max().item() < 1e-4 * ref.abs().max().item()
    with pytest.raises(BRGMError, match="conditional"):
        G.mapping(z)
    G.class_index = 3
    ref3 = reference_mapping(to_nvidia_names(G.state_dict()), z, 2, c=F.one_hot(torch.tensor([3] * 4), 5).double())
    assert (G.mapping(z).double() - ref3).abs().max().item() < 1e-4 * ref3.abs().max().item()
    for bad in (5, -1, "2"):
        with pytest.raises(BRGMError, match="out of range"):
            G.class_index = bad
    with pytest.raises(BRGMError, match="unconditional"):
        small(8).class_index = 0
    assert StyleGAN2Generator(**G.config()).config() == G.config()


def test_float32_matches_reference_closely():
    G = randomize(small(32, 3))
    ws = torch.randn(2, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(3))
    ref = reference_synthesis(to_nvidia_names(G.double().state_dict()), ws.double(), 32)
    G.float()
    assert (G(ws).double() - ref).abs().max().item() < 1e-4


def test_mapping_matches_reference():
    G = randomize(small(8)).double()
    z = torch.randn(5, G.z_dim, generator=torch.Generator().manual_seed(4)).double()
    ref = reference_mapping(to_nvidia_names(G.state_dict()), z, 2)
    # mapping runs in float32 (as NVIDIA's, which casts z to float32)
    assert (G.mapping(z).double() - ref).abs().max().item() < 1e-4 * ref.abs().max().item()


@pytest.mark.parametrize("res", [4, 8, 64, 256, 1024])
def test_num_ws_and_shapes(res):
    G = StyleGAN2Generator(z_dim=4, w_dim=4, img_resolution=res, img_channels=1, mapping_layers=1,
                           channel_base=res * 2, channel_max=4)
    assert G.num_ws == 2 * int(math.log2(res)) - 2
    assert G.synthesis_network.__getattr__(f"b{res}").conv1.noise_const.shape == (res, res)


def test_config_f_parameter_count():
    # Config-f, 1024 px, 18 x 512: 30,370,060 parameters (28,268,812 synthesis + 2,101,248 mapping),
    # the total we recall from NVIDIA's printed summary of the FFHQ generator. Built on the meta
    # device: no memory, no time.
    with torch.device("meta"):
        G = StyleGAN2Generator(img_resolution=1024, seed=None)
    assert G.num_ws == 18
    assert sum(p.numel() for p in G.synthesis_network.parameters()) == 28_268_812
    assert sum(p.numel() for p in G.mapping_network.parameters()) == 2_101_248


def test_noise_modes():
    G = randomize(small(8))
    ws = torch.randn(2, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(5))
    a, b = G(ws), G(ws)
    assert torch.equal(a, b)  # const noise: deterministic
    G.noise_mode = "random"
    c, d = G(ws), G(ws)
    assert (c - d).abs().max() > 1e-3  # fresh noise each call
    G.noise_mode = "none"
    e = G(ws)
    with torch.no_grad():
        for m in G.modules():
            if hasattr(m, "noise_strength"):
                m.noise_strength.zero_()
    G.noise_mode = "const"
    assert torch.allclose(G(ws), e, atol=1e-6)
    assert (a - e).abs().max() > 1e-3
    with pytest.raises(BRGMError, match="noise_mode"):
        G.noise_mode = "fixed"


def test_leading_dims_gradients_and_training():
    G = randomize(small(16))
    ws = torch.randn(2, 3, G.num_ws, G.w_dim, requires_grad=True)
    img = G(ws)
    assert img.shape == (2, 3, 3, 16, 16)
    flat = G(ws.detach().reshape(6, G.num_ws, G.w_dim)).reshape(2, 3, 3, 16, 16)
    assert torch.allclose(img, flat, atol=1e-6)
    img.square().mean().backward()
    assert ws.grad is not None and ws.grad.abs().sum() > 0
    G.mapping(torch.randn(4, G.z_dim)).square().mean().backward()
    for name, p in G.named_parameters():
        assert p.requires_grad, name
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # a few SGD steps reduce a simple loss: the parameters are trainable normally
    G2 = small(8, seed=3)
    opt = torch.optim.Adam(G2.parameters(), lr=1e-2)
    w = torch.randn(4, G2.num_ws, G2.w_dim, generator=torch.Generator().manual_seed(0))
    target = torch.zeros(4, 3, 8, 8)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = (G2(w) - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_seed_and_config_roundtrip():
    a, b, c = small(8, seed=7), small(8, seed=7), small(8, seed=8)
    assert torch.equal(a.synthesis_network.b8.conv0.weight, b.synthesis_network.b8.conv0.weight)
    assert not torch.equal(a.synthesis_network.b8.conv0.weight, c.synthesis_network.b8.conv0.weight)
    cfg = a.config()
    d = StyleGAN2Generator(**cfg)
    assert d.config() == cfg
    assert not any("filter" in k for k in a.state_dict())  # the fixed filter is not a saved tensor


def test_w_avg_update():
    G = small(8)
    w = torch.ones(3, G.w_dim)
    G.update_w_avg(w, beta=0.5)
    assert torch.allclose(G.w_avg, torch.full((G.w_dim,), 0.5))


@pytest.mark.parametrize("bad", [dict(img_resolution=12), dict(img_resolution=2), dict(channel_base=8)])
def test_bad_config(bad):
    with pytest.raises(BRGMError):
        small(**bad)


def test_brgm_map_end_to_end_on_random_256px_stylegan2():
    """The core BRGM MAP runs unchanged on our StyleGAN2 (random weights, 256 x 256, 1 channel,
    small channel counts) and fits an x8 super-resolution observation of a generated image."""
    from brgm_pyro.inference import run_map
    from brgm_pyro.models.brgm import build_model
    from brgm_pyro.models.corruptions import SuperResolution
    from brgm_pyro.models.generators import compute_latent_stats

    torch.manual_seed(0)
    G = StyleGAN2Generator(z_dim=16, w_dim=16, img_resolution=256, img_channels=1, mapping_layers=2,
                           channel_base=512, channel_max=8, seed=0)
    G.requires_grad_(False)
    assert G.num_ws == 14
    stats = compute_latent_stats(G, num_samples=2000, seed=0)
    f = SuperResolution(8)
    g = torch.Generator().manual_seed(1)
    w_true = stats.mu + stats.sigma * torch.randn(1, G.num_ws, G.w_dim, generator=g)
    with torch.no_grad():
        y = f(G(w_true))
    assert y.shape == (1, 1, 32, 32)
    model = build_model(G, f, sigma_pixel=0.05, stats=stats)
    init = model.init_latents(1)
    with torch.no_grad():
        err0 = (f(G(init)) - y).square().mean().item()
    res = run_map(model, y, steps=60, lr=0.1, seed=0, progress=False)
    assert res.w.shape == (1, G.num_ws, G.w_dim) and res.image.shape == (1, 1, 256, 256)
    assert torch.isfinite(res.image).all() and res.stopped is None
    with torch.no_grad():
        err = (f(G(res.w)) - y).square().mean().item()
        assert torch.allclose(res.image, G(res.w), atol=1e-5)
    assert err < 0.3 * err0, (err, err0)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_reduced_precision_blocks(dtype, tol):
    # The fp16/bf16 code path (used on CUDA for the num_fp16_res highest resolutions) exercised
    # on CPU: same images up to the precision of the format, output in float32, finite gradients.
    G = randomize(small(32, 3, num_fp16_res=2, conv_clamp=256.0))
    ws = torch.randn(2, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(6), requires_grad=True)
    full = G(ws)
    half = G.synthesis_network(ws, "const", dtype)
    assert half.dtype == torch.float32
    assert (half - full).abs().max().item() < tol * full.abs().max().item()
    assert G.synthesis_network.b32.use_fp16 and G.synthesis_network.b16.use_fp16
    assert not G.synthesis_network.b8.use_fp16
    half.square().mean().backward()
    assert torch.isfinite(ws.grad).all()
    G.precision = "bf16"  # on CPU the public synthesis stays fp32
    assert torch.equal(G(ws), full)


def test_gradcheck_tiny():
    # Exact gradients (float64 finite differences) through every op of the synthesis, with respect
    # to the latents and to representative weights, incl. the in-place steps of the forward pass.
    G = randomize(small(8, 1, conv_clamp=None, channel_base=16, channel_max=2, w_dim=3, z_dim=3)).double()
    ws = torch.randn(1, G.num_ws, G.w_dim, dtype=torch.float64, requires_grad=True)
    params = [G.synthesis_network.b8.conv0.weight, G.synthesis_network.b8.conv0.affine.bias,
              G.synthesis_network.b4.const, G.synthesis_network.b8.torgb.weight,
              G.synthesis_network.b8.conv1.noise_strength]

    assert torch.autograd.gradcheck(lambda w: G(w), (ws,), eps=1e-6, atol=1e-6)
    # weights: compare autograd to central differences on a scalar loss
    loss = lambda: G(ws.detach()).square().sum()  # noqa: E731
    for p in params:
        p.grad = None
        loss().backward()
        g = p.grad.reshape(-1)[0].item()
        with torch.no_grad():
            p.view(-1)[0] += 1e-6
            up = loss().item()
            p.view(-1)[0] -= 2e-6
            down = loss().item()
            p.view(-1)[0] += 1e-6
        assert abs(g - (up - down) / 2e-6) < 1e-5 * max(1.0, abs(g)), p.shape
