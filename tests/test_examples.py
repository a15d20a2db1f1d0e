"""The examples in examples/: short seeded runs that must learn, the MLP's training step
against an all-NumPy float64 reference, and the deep-net experiment's measured effect."""

import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from reference import (adam_reference, batch_norm_backward_reference,
                       batch_norm_forward_reference, sgd_reference)

pytest.importorskip("sklearn")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import deep_net_batchnorm  # noqa: E402
import train_mlp_digits as mlp  # noqa: E402


# ---------------------------------------------------------------- the MLP example

@pytest.mark.parametrize("argv", [
    ["--optimizer", "adam"],
    ["--optimizer", "adamw", "--max-grad-norm", "1.0"],
    ["--optimizer", "sgd", "--weight-decay", "5e-4", "--constant-lr"],
], ids=["adam", "adamw-clip", "sgd"])
def test_mlp_example_learns(capsys, argv):
    history = mlp.main([*argv, "--epochs", "3", "--hidden", "64", "64", "--seed", "1"])
    assert history.loss[-1] < 0.5 * history.loss[0]
    assert history.train_accuracy[-1] > 0.9
    assert history.test_accuracy[-1] > 0.9  # chance is 0.1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len([line for line in lines if line.startswith("epoch")]) == 3
    assert re.fullmatch(r"test accuracy: 0\.\d{4}", lines[-1])
    assert float(lines[-1].split()[-1]) == pytest.approx(history.test_accuracy[-1], abs=5e-5)


@pytest.mark.parametrize("argv", [
    ["--precision", "bf16", "--rounding", "nearest"],
    ["--precision", "bf16", "--rounding", "stochastic"],
    ["--precision", "bf16", "--rounding", "master", "--optimizer", "adamw"],
    ["--precision", "fp16"],
], ids=["bf16-nearest", "bf16-stochastic", "bf16-master", "fp16-loss-scaling"])
def test_mlp_example_learns_in_16_bits(capsys, argv):
    history = mlp.main([*argv, "--epochs", "3", "--hidden", "64", "64", "--seed", "1"])
    assert history.loss[-1] < 0.5 * history.loss[0]
    assert history.test_accuracy[-1] > 0.9
    out = capsys.readouterr().out
    assert argv[1] in out
    if argv[1] == "fp16":
        # 63 steps: no growth yet (every 2000 good steps); an overflow would halve it
        scale = float(re.search(r"loss scale at the end: (\S+)", out).group(1))
        assert scale in (2.0**16, 2.0**15, 2.0**14)


def test_bf16_rounding_comparison(capsys, tmp_path):
    """Pure bfloat16 with round-to-nearest loses the small SGD updates and ends with a
    higher training loss; stochastic rounding and master weights track float32."""
    path = tmp_path / "bf16.png"
    runs = mlp.main(["--precision", "bf16", "--compare-rounding", "--optimizer", "sgd",
                     "--lr", "0.02", "--epochs", "12", "--hidden", "64", "64", "--seed", "0",
                     "--plot", str(path)])
    final = {label: h.loss[-1] for label, h in runs.items()}
    assert final["bf16 nearest"] > 1.3 * final["float32"]
    for label in ("bf16 stochastic", "bf16 master"):
        assert final[label] < 1.1 * final["float32"]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mlp_example_is_seeded(capsys):
    argv = ["--epochs", "1", "--hidden", "32", "32", "--seed", "3"]
    first, second = mlp.main(argv), mlp.main(argv)
    assert first.loss == second.loss
    assert first.test_accuracy == second.test_accuracy


def test_mlp_example_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "curves.png"
    mlp.main(["--epochs", "2", "--hidden", "32", "32", "--plot", str(path)])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _relu_net_reference(params, x, y, running):
    """Forward and backward of the example's MLP (Dense -> BN -> ReLU blocks, Dense
    output, mean softmax cross-entropy) in float64, from the formulas. ``params`` is
    [W, gamma, beta] per hidden block then [W, b]; ``running`` is [[mean, var], ...] per
    block, updated in place. Returns the gradients aligned with ``params``."""
    n_blocks = (len(params) - 2) // 3
    h = np.asarray(x, np.float64)
    saved = []
    for k in range(n_blocks):
        w, gamma, beta = params[3 * k:3 * k + 3]
        z = h @ w
        zn, mean, invstd, running[k][0], running[k][1] = batch_norm_forward_reference(
            z, gamma, beta, running[k][0], running[k][1], training=True)
        saved.append((h, z, mean, invstd, zn))
        h = np.maximum(zn, 0)
    w_out, b_out = params[-2:]
    logits = h @ w_out + b_out
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    n = x.shape[0]
    dlogits = probs.copy()
    dlogits[np.arange(n), y] -= 1
    dlogits /= n
    grads = [None] * len(params)
    grads[-2], grads[-1] = h.T @ dlogits, dlogits.sum(axis=0)
    dh = dlogits @ w_out.T
    for k in range(n_blocks - 1, -1, -1):
        h_in, z, mean, invstd, zn = saved[k]
        dzn = dh * (zn > 0)
        dz, grads[3 * k + 1], grads[3 * k + 2] = batch_norm_backward_reference(
            dzn, z, params[3 * k + 1], mean, invstd, training=True)
        grads[3 * k] = h_in.T @ dz
        dh = dz @ params[3 * k].T
    return grads


OPTIMIZER_CASES = {
    # name, lr, weight decay (dense weights only), max_grad_norm (small enough to clip)
    "sgd": ("sgd", 0.05, 1e-2, 0.5),
    "adam": ("adam", 1e-3, 1e-2, None),
    "adamw": ("adamw", 1e-3, 0.1, 0.5),
}


@pytest.mark.parametrize("case", list(OPTIMIZER_CASES))
def test_mlp_steps_match_numpy_reference(case):
    """Four training steps of the example (fo.nn.BatchNorm + fo.optim, param groups,
    clipping) give the params of an all-NumPy float64 forward/backward/update."""
    name, lr, weight_decay, max_grad_norm = OPTIMIZER_CASES[case]
    batch = 32
    x_train, y_train, _, _ = mlp.load_digits_split(seed=0)
    model = mlp.MLP([64, 48, 32, 10], capacity=batch, seed=5)
    opt, grads = mlp.make_optimizer(model, name, lr, weight_decay, max_grad_norm)

    # The reference keeps its own float64 copies, in the layout of _relu_net_reference.
    layout = []
    for dense, bn in zip(model.dense, model.norms):
        layout += [dense.weight, bn.weight, bn.bias]
    layout += [model.dense[-1].weight, model.dense[-1].bias]
    ref = [p.astype(np.float64) for p in layout]
    decayed = [p.ndim == 2 for p in layout]
    running = [[bn.running_mean.astype(np.float64), bn.running_var.astype(np.float64)]
               for bn in model.norms]
    state = [dict(buf=np.zeros_like(p), m=np.zeros_like(p), v=np.zeros_like(p)) for p in ref]
    dlogits = np.empty((batch, 10), np.float32)
    clipped = False

    for step in range(1, 5):
        rows = slice((step - 1) * batch, step * batch)
        xb, yb = x_train[rows], y_train[rows]
        mlp.train_step(model, opt, grads, xb, yb, dlogits)

        ref_grads = _relu_net_reference(ref, xb, yb, running)
        if max_grad_norm is not None:
            total = math.sqrt(sum(float(np.sum(g * g)) for g in ref_grads))
            clipped |= total > max_grad_norm
            ref_grads = [g * min(1.0, max_grad_norm / (total + 1e-6)) for g in ref_grads]
        for i, (p, g, st) in enumerate(zip(ref, ref_grads, state)):
            wd = weight_decay if decayed[i] else 0.0
            if name == "sgd":
                ref[i], st["buf"] = sgd_reference(p, g, st["buf"], lr=lr, momentum=0.9,
                                                  nesterov=True, weight_decay=wd,
                                                  first_step=step == 1)
            else:
                ref[i], st["m"], st["v"], _ = adam_reference(
                    p, g, st["m"], st["v"], None, step=step, lr=lr, weight_decay=wd,
                    decoupled_weight_decay=name == "adamw")

        for i, (actual, expected) in enumerate(zip(layout, ref)):
            scale = max(float(np.max(np.abs(expected))), 1.0)
            np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=2e-5 * scale,
                                       err_msg=f"param {i} after step {step}")
        for bn, (mean, var) in zip(model.norms, running):
            np.testing.assert_allclose(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(bn.running_var, var, rtol=1e-4, atol=1e-5)
    assert clipped == (max_grad_norm is not None)


# ---------------------------------------------------------------- the deep-net example

def test_deep_nets_share_their_init():
    plain = deep_net_batchnorm.build(6, 16, batch_norm=False, capacity=8, seed=2)
    normed = deep_net_batchnorm.build(6, 16, batch_norm=True, capacity=8, seed=2)
    for a, b in zip(plain.dense, normed.dense):
        np.testing.assert_array_equal(a.weight, b.weight)
    assert all(bn is None for bn in plain.norms)
    assert all(bn is not None for bn in normed.norms)


def test_deep_net_batchnorm_effect(capsys):
    results = deep_net_batchnorm.main(["--epochs", "3", "--seed", "0"])
    plain, normed = results["plain"], results["batchnorm"]
    assert len(plain["grad_norms"]) == len(normed["grad_norms"]) == 30

    # Without batch norm the gradient vanishes towards the input: the first layer's is
    # many orders of magnitude below the last one's. With it, all layers are comparable.
    assert plain["grad_norms"][0] < 1e-8 * plain["grad_norms"][-1]
    assert max(normed["grad_norms"]) < 30 * min(normed["grad_norms"])

    h_plain, h_bn = plain["history"], normed["history"]
    assert h_bn.loss[-1] < 0.5 * h_bn.loss[0]
    assert h_bn.test_accuracy[-1] > 0.7
    assert h_bn.test_accuracy[-1] > h_plain.test_accuracy[-1] + 0.4

    out = capsys.readouterr().out
    assert "first/last layer ratio" in out
    assert out.count("test accuracy after 3 epochs") == 2
