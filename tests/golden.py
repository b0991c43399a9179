"""What the golden tests against Hugging Face share (tests/test_gpt_golden.py, test_llama.py):
the float64 loss on both sides, the tolerance check, and 10 AdamW steps side by side."""
import numpy as np

from tinyllm import backend
from tinyllm.optim import AdamW


def hf_loss(torch, hf, idx):
    """HF's own shift (ForCausalLMLoss), in float64: logits[:, :-1] against idx[:, 1:]. (HF's
    ``labels=`` loss casts the logits to float32 first, which would cap the agreement.)"""
    logits = hf(idx).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                             idx[:, 1:].reshape(-1))


def tl_loss(model, idx):
    """The same quantity in tinyllm: by causality the first T - 1 logits ignore the last token."""
    return model(idx[:, :-1], idx[:, 1:])[1]


def assert_close(ours, theirs, rtol, what):
    """Relative to the tensor's largest entry, so near-zero elements do not dominate."""
    ours, theirs = backend.asnumpy(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, what
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * np.abs(theirs).max(),
                               err_msg=what)


def decay_groups(named_params, weight_decay):
    """Weight decay on the matrices only (nanoGPT's rule), the same in both optimizers."""
    params = [p for _, p in named_params]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def adamw_steps(torch, hf, model, batches, lr, betas, eps, weight_decay):
    """One AdamW step per batch on both models; returns (HF's losses, tinyllm's losses)."""
    hf_opt = torch.optim.AdamW(decay_groups(hf.named_parameters(), weight_decay), lr=lr,
                               betas=betas, eps=eps)
    opt = AdamW(decay_groups(model.named_parameters(), weight_decay), lr=lr, betas=betas,
                eps=eps)
    hf_losses, losses = [], []
    for idx in batches:
        hf_opt.zero_grad()
        loss = hf_loss(torch, hf, torch.from_numpy(idx))
        loss.backward()
        hf_opt.step()
        hf_losses.append(loss.item())
        opt.zero_grad()
        loss = tl_loss(model, idx)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return hf_losses, losses
