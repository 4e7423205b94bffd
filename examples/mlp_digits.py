"""A small MLP classifier on scikit-learn's bundled 8x8 digits, trained with cross-entropy and SGD;
prints the loss curves of fused_ce and torch side by side, and the final test accuracy.

    python examples/mlp_digits.py
"""

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import fused_ce


def load(seed):
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    split = int(0.8 * len(y))
    return (x[:split], y[:split]), (x[split:], y[split:])


def train(loss_fn, steps=300, seed=0, lr=0.2, batch=128):
    """Minibatch SGD on a 64-64-10 MLP; returns (loss per step, test accuracy after training)."""
    (x, y), (x_test, y_test) = load(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    order = torch.Generator().manual_seed(seed + 1)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch,), generator=order)
        loss = loss_fn(model(x[idx]), y[idx], label_smoothing=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return losses, accuracy


if __name__ == "__main__":
    ours, acc_ours = train(fused_ce.cross_entropy)
    ref, acc_ref = train(F.cross_entropy)
    print(f"{'step':>5} {'fused_ce':>12} {'torch':>12}")
    for step in list(range(0, len(ours), 25)) + [len(ours) - 1]:
        print(f"{step:>5} {ours[step]:>12.6f} {ref[step]:>12.6f}")
    print(f"test accuracy: fused_ce {acc_ours:.4f}, torch {acc_ref:.4f}")
