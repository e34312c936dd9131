"""Does a faces generator draw the right faces? Per-part code recovery through the encoder.

Pixel PSNR between ``G(mapping(u))`` and ``draw(u)`` is dominated by the large regions
(background, skin, hair) and barely moves when the eyes, eyebrows, mouth or glasses are missing
(~4 % of the pixels). This measure looks at the parts instead: the bundled perceptual encoder
(:class:`~brgm_pyro.models.perceptual.faces_encoder.FacesEncoder`, trained on drawings to
predict their code ``u``) reads the code back from an image, and for each group of code entries
(the eyes: u[16:20], the mouth: u[27:31], ...) we report

    R^2 = 1 - mean_i,k (enc(x_i)_k - u_ik)^2 / mean_i,k (u_ik - mean_i u_ik)^2

over test faces, for the generator's images ``x = G(mapping(u))`` and for the drawings
``x = draw(u)`` themselves (the ceiling: some entries, such as the hidden logits of a
categorical choice, cannot be read from any image). A generator that leaves the eyes out gets
R^2 near 0 for the eye entries however high its PSNR.
"""

from __future__ import annotations

import torch

# Groups of entries of the face code (see brgm_pyro.data.faces.face_params).
CODE_GROUPS: dict[str, list[int]] = {
    "face shape": [0, 1, 2],
    "pose": [3, 4, 5, 6],
    "skin": [7, 8],
    "hair": [9, 10, 11, 12, 13, 14, 15],
    "eyes": [16, 17, 18, 19],
    "eyebrows": [20, 21, 22],
    "nose": [23, 24, 25, 26],
    "mouth": [27, 28, 29, 30],
    "glasses": [31, 32],
    "background": [33, 34, 35, 36],
    "shirt, ears": [37, 38, 39],
}


def broadcast(w: torch.Tensor, num_ws: int) -> torch.Tensor:
    """(B, d) -> (B, num_ws, d): one w for every layer."""
    return w.unsqueeze(1).expand(-1, num_ws, -1)


def generate_from_codes(G, u: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, 64, 64) of face codes u (B, 40) through mapping and synthesis."""
    return G.synthesis(broadcast(G.mapping(u), G.num_ws))


@torch.no_grad()
def code_recovery(G, n: int = 256, split: str = "test", encoder=None, batch: int = 64) -> dict:
    """R^2 per code group (module docstring) for ``G`` and for the drawings, on faces 0..n-1.

    Returns ``{group: {"generator": r2, "drawings": r2}}`` plus ``"all"``.
    """
    from brgm_pyro.data.faces import face_batch
    from brgm_pyro.models.perceptual import load_faces64_percept

    enc = encoder if encoder is not None else load_faces64_percept().encoder
    dev = next(G.parameters()).device
    us, pg, pd = [], [], []
    for s in range(0, n, batch):
        u, x = face_batch(range(s, min(n, s + batch)), split)
        y = generate_from_codes(G, u.to(dev)).clamp(-1, 1).cpu()
        us.append(u)
        pg.append(enc(y))
        pd.append(enc(x))
    u, pg, pd = torch.cat(us), torch.cat(pg), torch.cat(pd)
    var = (u - u.mean(0)).pow(2)
    out = {}
    for name, idx in list(CODE_GROUPS.items()) + [("all", list(range(u.shape[1])))]:
        v = var[:, idx].mean()
        out[name] = {"generator": float(1 - (pg[:, idx] - u[:, idx]).pow(2).mean() / v),
                     "drawings": float(1 - (pd[:, idx] - u[:, idx]).pow(2).mean() / v)}
    return out
