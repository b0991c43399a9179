"""A variational autoencoder (Kingma & Welling 2014) for binary vectors, e.g. bags of words.

    x (B, D) -> encoder -> mu, logvar (B, Z)        q(z | x) = N(mu, diag(e^logvar))
    z = mu + e^(logvar / 2) * eps,  eps ~ N(0, I)   the reparameterization trick
    z -> decoder -> logits (B, D)                   p(x | z) = prod_d Bernoulli(x_d; s(logit_d))

Training maximizes the evidence lower bound, i.e. minimizes its negative:

    loss = E_q[-log p(x | z)] + KL(q(z | x) || N(0, I))
         = reconstruction      + regularizer

The reconstruction term is estimated with one sample z per input: the binary cross-entropy of
the decoder's logits against x, summed over the D features (F.binary_cross_entropy_with_logits).
The KL term has a closed form for two Gaussians (F.gaussian_kl, derived in
tinyllm/ops/loss.py). The sample is written as a deterministic function of (mu, logvar) and an
independent noise eps, so backprop reaches the encoder through mu and logvar:
dz/dmu = 1, dz/dlogvar = eps e^(logvar / 2) / 2. With eps fixed, the whole loss is an ordinary
differentiable function of the parameters, and gradcheck can verify it.
"""
from tinyllm import backend
from tinyllm import functional as F
from tinyllm.autograd.tensor import Tensor
from tinyllm.nn import Linear, Module


class VAE(Module):
    """``vae(x, eps=None)`` -> (logits (B, D), mu (B, Z), logvar (B, Z)); ``vae.loss(x)`` ->
    (loss, reconstruction, kl), each a mean over the batch.

    Encoder: Linear(D, hidden) -> tanh -> Linear(hidden, 2Z), split into mu and logvar.
    Decoder: Linear(Z, hidden) -> tanh -> Linear(hidden, D).
    ``eps``: the noise (B, Z); drawn from ``generator`` (or tinyllm's seeded one) when None.
    In eval mode z = mu (the posterior mean), unless ``eps`` is given.
    """

    def __init__(self, input_dim, hidden_dim=256, latent_dim=16):
        super().__init__()
        self.input_dim, self.latent_dim = input_dim, latent_dim
        self.enc_hidden = Linear(input_dim, hidden_dim)
        self.enc_out = Linear(hidden_dim, 2 * latent_dim)
        self.dec_hidden = Linear(latent_dim, hidden_dim)
        self.dec_out = Linear(hidden_dim, input_dim)

    def encode(self, x):
        h = self.enc_hidden(x).tanh()                                   # (B, hidden)
        mu_logvar = self.enc_out(h)                                     # (B, 2Z)
        Z = self.latent_dim
        return mu_logvar[:, :Z], mu_logvar[:, Z:]

    def decode(self, z):
        return self.dec_out(self.dec_hidden(z).tanh())                  # (B, D) logits

    def forward(self, x, eps=None, generator=None):
        x = x if isinstance(x, Tensor) else F.tensor(x)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"VAE: expected x of shape (B, {self.input_dim}), got {x.shape}")
        mu, logvar = self.encode(x)
        if eps is None and not self.training:
            z = mu
        else:
            if eps is None:
                gen = generator if generator is not None else backend.get_generator(x.device)
                eps = F.tensor(gen.standard_normal(mu.shape).astype(mu.dtype), device=x.device)
            z = mu + (logvar * 0.5).exp() * eps                         # reparameterization
        return self.decode(z), mu, logvar

    def loss(self, x, eps=None, generator=None, beta=1.0):
        """(loss, reconstruction, kl) for a batch x (B, D) of values in [0, 1]: reconstruction
        = the binary cross-entropy summed over features, kl = the Gaussian KL summed over the
        latent axis, both averaged over the batch; loss = reconstruction + beta * kl (beta < 1
        during a KL warm-up)."""
        x = x if isinstance(x, Tensor) else F.tensor(x)
        logits, mu, logvar = self(x, eps=eps, generator=generator)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
        kl = F.gaussian_kl(mu, logvar, reduction="mean")
        return recon + kl * beta, recon, kl
