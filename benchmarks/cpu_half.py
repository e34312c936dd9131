"""Is NVIDIA's fp16 setting of any use on the CPU? G's forward + backward in fp32 against the same
network with its ``num_fp16_res`` highest resolutions in fp16 (and bf16), CPU seconds, one process.

    OMP_NUM_THREADS=1 python benchmarks/cpu_half.py --resolution 128

``StyleGAN2Generator.synthesis`` runs reduced precision on CUDA only (on the CPU the public path stays
fp32); this calls the synthesis network with the half dtype directly, the path tests/test_stylegan2.py
checks on the CPU. config-f widths (channel_base 32768, channel_max 512), num_fp16_res 4, conv_clamp 256.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    import torch

    from brgm_pyro.models.generators.stylegan2 import StyleGAN2Generator

    torch.set_num_threads(a.threads)
    G = StyleGAN2Generator(z_dim=512, w_dim=512, img_resolution=a.resolution, img_channels=3, channel_base=32768,
                           channel_max=512, num_fp16_res=4, conv_clamp=256, seed=0).eval().requires_grad_(False)
    ws = torch.randn(1, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(0))

    def cpu_seconds(dtype) -> float:
        out = []
        for _ in range(a.repeats + 1):  # the first call is left out (allocator warm-up)
            w = ws.clone().requires_grad_(True)
            t0 = time.process_time()
            G.synthesis_network(w, "const", dtype).square().mean().backward()
            out.append(time.process_time() - t0)
        return sorted(out[1:])[len(out[1:]) // 2]

    base = cpu_seconds(None)
    print(f"torch {torch.__version__}, {a.resolution} px, {a.threads} thread(s): G forward + backward, CPU s (median)")
    print(f"fp32: {base:.2f}")
    for name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        s = cpu_seconds(dt)
        print(f"{name} in the 4 highest resolutions: {s:.2f} ({s / base:.2f}x fp32)")


if __name__ == "__main__":
    main()
