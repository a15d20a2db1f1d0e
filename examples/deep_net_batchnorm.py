"""Vanishing gradients in a deep MLP, and what batch norm does about them.

Two 30-layer MLPs (64 -> 29 hidden layers of 128 -> 10) with sigmoid activations are
trained on scikit-learn's digits with the same data, the same seed, the same weight init
and the same optimizer; one is Dense -> sigmoid, the other Dense -> BatchNorm -> sigmoid
(``fo.nn.BatchNorm``). The weights are drawn from N(0, 1/fan_in), a textbook init that is
harmless in a shallow net.

Why the plain net fails: the sigmoid's derivative is at most 1/4 and its outputs sit
around 0.5, so going backward each layer multiplies the gradient by about 1/4 while, going
forward, the activations (the other factor of a weight gradient) keep their size. The
weight gradient of layer l therefore shrinks like 4^-(30 - l): the first layers get
gradients 10^15 or so times smaller than the last ones and do not move. Worse, the same
contraction acts on the differences between inputs, so after 30 layers every image maps
to almost the same vector and even the top layers have nothing to learn from: the plain
net stays at chance.

Why batch norm fixes it: each hidden layer's pre-activations are normalized to zero mean
and unit variance per feature, and the backward pass through the normalization divides
by the same standard deviation the forward pass divided by, so the per-layer gain of the
backward pass stays near 1 whatever the scale of the weights. The gradient norms of all
layers stay within a small factor of each other and the net trains in a few epochs.

The script prints the gradient norm of every few layers' weights at the start (one batch
of 256 images, ``fo.grad_norm``), then trains both nets and prints their accuracy.

    python examples/deep_net_batchnorm.py
    python examples/deep_net_batchnorm.py --epochs 10 --plot deep.png
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

import fusedops as fo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_mlp_digits import (  # noqa: E402
    MLP, limit_threads, load_digits_split, make_optimizer, train)

PROBE_SIZE = 256  # images in the batch the initial gradient norms are measured on


def build(depth: int, width: int, batch_norm: bool, capacity: int, seed: int) -> MLP:
    """``depth`` dense layers: 64 -> (depth - 1) x width -> 10, sigmoid, N(0, 1/fan_in) init."""
    sizes = [64] + [width] * (depth - 1) + [10]
    return MLP(sizes, batch_norm=batch_norm, activation="sigmoid",
               init_std=lambda fan_in: 1.0 / math.sqrt(fan_in), capacity=capacity, seed=seed)


def initial_grad_norms(model: MLP, x: np.ndarray, y: np.ndarray) -> list[float]:
    """L2 norm of each dense layer's weight gradient for one batch, at the initial weights.

    The batch-norm running statistics this forward pass updates are reset afterwards, so
    training starts from the same state as a model that was never probed.
    """
    logits = model.forward(x, training=True)
    dlogits = np.empty_like(logits)
    model.loss_and_grad(logits, y, dlogits)
    model.backward(dlogits)
    for bn in model.norms:
        if bn is not None:
            bn.running_mean[...] = 0
            bn.running_var[...] = 1
    return [fo.grad_norm([dense.grad_weight]) for dense in model.dense]


def run(*, depth: int = 30, width: int = 128, epochs: int = 5, batch_size: int = 64,
        optimizer: str = "sgd", lr: float = 0.1, seed: int = 0, verbose: bool = True) -> dict:
    """Trains the plain and the batch-norm net; returns, for each ("plain", "batchnorm"),
    {"grad_norms": per-layer initial weight-gradient norms, "history": History}."""
    data = load_digits_split(seed=seed)
    x_train, y_train = data[0], data[1]
    probe = np.random.default_rng(seed).choice(x_train.shape[0], PROBE_SIZE, replace=False)
    results = {}
    for name, batch_norm in (("plain", False), ("batchnorm", True)):
        model = build(depth, width, batch_norm, capacity=max(batch_size, PROBE_SIZE), seed=seed)
        norms = initial_grad_norms(model, x_train[probe], y_train[probe])
        opt, grads = make_optimizer(model, optimizer, lr, weight_decay=0.0, max_grad_norm=None)
        start = time.perf_counter()
        history = train(model, opt, grads, data, epochs=epochs, batch_size=batch_size,
                        seed=seed, verbose=verbose, label=f"{name:>9}  ")
        if verbose:
            print(f"{name:>9}  trained in {time.perf_counter() - start:.2f} s")
        results[name] = {"grad_norms": norms, "history": history}
    return results


def report(results: dict, every: int = 3) -> None:
    plain, bn = results["plain"]["grad_norms"], results["batchnorm"]["grad_norms"]
    depth = len(plain)
    layers = sorted({*range(0, depth, every), depth - 1})
    print("\nweight-gradient norm per layer at initialization (one batch of "
          f"{PROBE_SIZE} images)")
    print(f"{'layer':>5}  {'plain':>10}  {'batchnorm':>10}")
    for i in layers:
        print(f"{i + 1:5d}  {plain[i]:10.3e}  {bn[i]:10.3e}")
    for name, norms in (("plain", plain), ("batchnorm", bn)):
        print(f"{name:>9}: first/last layer ratio {norms[0] / norms[-1]:.2e}, "
              f"max/min over layers {max(norms) / min(norms):.2e}")
    print()
    for name in ("plain", "batchnorm"):
        h = results[name]["history"]
        print(f"{name:>9}: loss {h.loss[0]:.4f} -> {h.loss[-1]:.4f}, "
              f"test accuracy after {len(h.loss)} epochs {h.test_accuracy[-1]:.4f}")


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_g, ax_l, ax_a) = plt.subplots(1, 3, figsize=(15, 4))
    for name in ("plain", "batchnorm"):
        norms = results[name]["grad_norms"]
        h = results[name]["history"]
        epochs = np.arange(1, len(h.loss) + 1)
        ax_g.plot(np.arange(1, len(norms) + 1), norms, marker=".", label=name)
        ax_l.plot(epochs, h.loss, marker=".", label=name)
        ax_a.plot(epochs, h.test_accuracy, marker=".", label=name)
    ax_g.set(xlabel="layer", ylabel="weight-gradient norm at init", yscale="log",
             title="gradient norm per layer")
    ax_l.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_a.set(xlabel="epoch", ylabel="test accuracy", ylim=(0, 1), title="test accuracy")
    for ax in (ax_g, ax_l, ax_a):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=30, help="number of dense layers")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="sgd")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for fusedops and NumPy's BLAS (default 0: one BLAS thread, "
                             "fusedops' default)")
    parser.add_argument("--plot", metavar="PATH", default=None)
    args = parser.parse_args(argv)
    with limit_threads(args.threads or None):
        results = run(depth=args.depth, width=args.width, epochs=args.epochs,
                      batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                      seed=args.seed)
    report(results)
    if args.plot:
        plot(results, args.plot)
        print(f"saved {args.plot}")
    return results


if __name__ == "__main__":
    main()
