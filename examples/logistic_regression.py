"""Logistic regression trained by plain gradient descent with BCE-with-logits, on a synthetic,
nearly separable dataset; prints the loss curves of fused_ce and torch side by side.

    python examples/logistic_regression.py
"""

import torch
import torch.nn.functional as F

import fused_ce


def make_data(seed, n=512, features=8):
    gen = torch.Generator().manual_seed(seed)
    true_w = torch.randn(features, generator=gen)
    x = torch.randn(n, features, generator=gen)
    logits = x @ true_w * 2.0
    flip = torch.rand(n, generator=gen) < 0.05  # a few mislabeled points: separable-ish
    y = ((logits > 0) ^ flip).double()
    return x.double(), y


def train(loss_fn, steps=200, seed=0, lr=0.5):
    """Gradient descent on (w, b); returns the loss at every step."""
    x, y = make_data(seed)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    pos_weight = torch.tensor(1.5, dtype=torch.float64)
    losses = []
    for _ in range(steps):
        loss = loss_fn(x @ w + b, y, pos_weight=pos_weight)
        gw, gb = torch.autograd.grad(loss, (w, b))
        with torch.no_grad():
            w -= lr * gw
            b -= lr * gb
        losses.append(loss.item())
    return losses


if __name__ == "__main__":
    ours = train(fused_ce.binary_cross_entropy_with_logits)
    ref = train(F.binary_cross_entropy_with_logits)
    print(f"{'step':>5} {'fused_ce':>12} {'torch':>12}")
    for step in list(range(0, len(ours), 20)) + [len(ours) - 1]:
        print(f"{step:>5} {ours[step]:>12.6f} {ref[step]:>12.6f}")
