"""The VAE (issue 6): its loss is gradient-checked with the noise fixed, and the closed-form KL
term agrees with a Monte Carlo estimate of the same divergence."""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm import functional as F
from tinyllm.models import VAE
from tinyllm.nn import Module


class _VAELoss(Module):
    """The VAE's training loss for a fixed batch and fixed noise, as one module to gradcheck."""

    def __init__(self, vae, eps, beta):
        super().__init__()
        self.vae, self.eps, self.beta = vae, eps, beta

    def forward(self, x):
        return self.vae.loss(x, eps=self.eps, beta=self.beta)[0]


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_vae_loss_gradcheck_with_fixed_noise(beta):
    tl.manual_seed(0)
    vae = VAE(7, hidden_dim=5, latent_dim=3).double()
    rng = np.random.default_rng(1)
    x = tl.tensor((rng.random((4, 7)) > 0.5).astype(np.float64))
    eps = tl.tensor(rng.standard_normal((4, 3)))
    assert tl.gradcheck_module(_VAELoss(vae, eps, beta), x)


def test_vae_loss_is_its_two_terms_and_eval_uses_the_mean():
    tl.manual_seed(0)
    vae = VAE(6, hidden_dim=8, latent_dim=2).double()
    x = (np.random.default_rng(2).random((5, 6)) > 0.5).astype(np.float64)
    eps = tl.tensor(np.random.default_rng(3).standard_normal((5, 2)))
    loss, recon, kl = vae.loss(x, eps=eps, beta=0.5)
    assert loss.item() == pytest.approx(recon.item() + 0.5 * kl.item(), rel=1e-12)
    logits, mu, logvar = vae(x, eps=eps)
    z = mu.numpy() + np.exp(0.5 * logvar.numpy()) * eps.numpy()          # reparameterization
    np.testing.assert_allclose(logits.numpy(), vae.decode(tl.tensor(z)).numpy(), atol=1e-12)
    p = 1 / (1 + np.exp(-logits.numpy()))
    want = -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(1).mean()
    assert recon.item() == pytest.approx(want, rel=1e-10)
    vae.eval()
    logits_eval, mu_eval, _ = vae(x)
    np.testing.assert_allclose(logits_eval.numpy(), vae.decode(mu_eval).numpy(), atol=1e-12)
    with pytest.raises(ValueError, match=r"VAE: expected x of shape \(B, 6\), got \(5, 4\)"):
        vae(np.zeros((5, 4)))


def test_closed_form_kl_matches_monte_carlo():
    rng = np.random.default_rng(0)
    mu = rng.standard_normal((3, 4))
    logvar = rng.uniform(-1.5, 1.0, (3, 4))
    kl = F.gaussian_kl(tl.tensor(mu), tl.tensor(logvar), reduction="none").numpy()   # (3,)
    # E_q[log q(z) - log p(z)] with z ~ q = N(mu, e^logvar), p = N(0, 1), by sampling
    n = 200_000
    s = np.exp(0.5 * logvar)
    z = mu + s * rng.standard_normal((n, 3, 4))
    log_q = -0.5 * (((z - mu) / s) ** 2 + logvar + np.log(2 * np.pi))
    log_p = -0.5 * (z ** 2 + np.log(2 * np.pi))
    mc = (log_q - log_p).sum(-1)                                             # (n, 3)
    se = mc.std(0) / np.sqrt(n)
    assert np.all(np.abs(mc.mean(0) - kl) < 4 * se)
    assert np.all(se < 0.02)                                                 # a real test
    zero = F.gaussian_kl(tl.zeros(2, 3), tl.zeros(2, 3))                     # q = p: KL 0
    assert zero.item() == 0.0
