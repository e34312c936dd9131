"""Shared helpers of the MCMC tests (no tests here): closed-form Gaussian targets and ESS-based z-scores."""

from __future__ import annotations

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC


def ess(x: np.ndarray) -> np.ndarray:
    """Bulk ESS of each column of draws ``x`` (chains, draws, K) (or (draws, K))."""
    x = np.asarray(x, dtype=float)
    if x.ndim == 2:
        x = x[None]
    return np.asarray(az.ess(az.convert_to_dataset({"f": x}))["f"].values, dtype=float)


def zscores(f: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Monte Carlo z-scores ``(mean f - E f) / (sd f / sqrt(ESS f))`` per column of ``f`` (.., draws, K)."""
    f = np.asarray(f, dtype=float)
    flat = f.reshape(-1, f.shape[-1])
    se = flat.std(0, ddof=1) / np.sqrt(np.maximum(ess(f), 1.0))
    return (flat.mean(0) - truth) / se


def moment_functions(w: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Test functions: w_i and (w_i - mu_i)(w_j - mu_j) for i <= j; (.., draws, D) -> (.., draws, K)."""
    D = w.shape[-1]
    c = w - mu
    iu = np.triu_indices(D)
    return np.concatenate([w, (c[..., :, None] * c[..., None, :])[..., iu[0], iu[1]]], -1)


def moment_truth(mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    iu = np.triu_indices(len(mu))
    return np.concatenate([mu, cov[iu]])


class LinearGaussian:
    """w ~ N(0, I_D), y ~ N(A w, s^2 I_P) with a chosen posterior precision spectrum.

    The exact posterior is N(mu, Sigma) with Sigma = (A^T A / s^2 + I)^-1, mu = Sigma A^T y / s^2.
    """

    def __init__(self, eigs=(8.0, 15.0, 25.0), seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        D = len(eigs)
        Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
        self.s = 0.5
        # A^T A / s^2 = Q diag(eigs - 1) Q^T  ->  A = s diag(sqrt(eigs - 1)) Q^T
        self.A = (self.s * torch.diag(torch.tensor(eigs, dtype=torch.float64) - 1).sqrt() @ Q.T).float()
        self.D = D
        self.y = (self.A @ torch.tensor([0.7, -0.4, 0.2][:D] + [0.0] * max(0, D - 3))
                  + self.s * torch.randn(D, generator=g)).float()
        prec = self.A.double().T @ self.A.double() / self.s ** 2 + torch.eye(D, dtype=torch.float64)
        self.precision = prec.numpy()
        self.cov = np.linalg.inv(self.precision)
        self.mean = self.cov @ (self.A.double().T @ self.y.double()).numpy() / self.s ** 2

    def model(self, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(self.D), 1.0).to_event(1))
        pyro.sample("y", dist.Normal(self.A @ w, self.s).to_event(1), obs=y)

    def ula_cov(self, eps: float, precond: np.ndarray | None = None) -> np.ndarray:
        """Exact stationary covariance of (preconditioned) ULA on this Gaussian.

        With u = G^{-1/2} z the chain is plain ULA on precision K = G^{1/2} P G^{1/2}; in K's
        eigenbasis the variance is 1 / (lam (1 - eps lam / 4)).
        """
        g = np.ones(self.D) if precond is None else np.asarray(precond, dtype=float)
        s = np.sqrt(g)
        K = s[:, None] * self.precision * s[None, :]
        lam, V = np.linalg.eigh(K)
        Cu = (V / (lam * (1 - eps * lam / 4))) @ V.T
        return s[:, None] * Cu * s[None, :]


def run_kernel(kernel, data, num_samples, warmup, seed=0):
    """Run one chain in pyro.infer.MCMC; returns (draws (S, D) numpy, list of last_info dicts, mcmc)."""
    pyro.set_rng_seed(seed)
    infos = []

    def hook(k, params, stage, i):
        if stage.startswith("Sample"):
            infos.append(dict(k.last_info))

    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup, disable_progbar=True, hook_fn=hook)
    mcmc.run(data)
    return mcmc.get_samples()["w"].double().numpy(), infos, mcmc
