"""LAMB, LARS and Lion cross-checked against optax (its lamb, lars and lion), skipped when
optax is not importable (install: the `compare` extra). optax runs in float32 (JAX's
default); ten steps of both on the same float32 params and grads agree to float32
rounding. Each test uses the optax configuration that is the variant our docstring
names; where optax's conventions differ, the comment says how.

timm.optim (Lamb, Lars, Lion) is not cross-checked: importing timm needs torchvision,
which would pull in another torch build."""

import numpy as np
import pytest

import fusedops as fo

optax = pytest.importorskip("optax")
jnp = pytest.importorskip("jax.numpy")

SHAPES = [(7, 33), (17,), (1,), (1000,)]
STEPS = 10


def problem(seed):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(STEPS)]
    return params, grads


def optax_run(transform, params, grads):
    """The params after optax's updates, as float32 NumPy arrays."""
    p = [jnp.asarray(x) for x in params]
    state = transform.init(p)
    for g in grads:
        updates, state = transform.update([jnp.asarray(x) for x in g], state, p)
        p = optax.apply_updates(p, updates)
    return [np.asarray(x) for x in p]


def assert_agree(ours, theirs):
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_lamb_matches_optax(isa, weight_decay):
    """optax.lamb is scale_by_adam (bias-corrected moments, eps outside the root),
    add_decayed_weights, then scale_by_trust_ratio (||p|| / ||u||, 1 when either is 0):
    our LAMB with bias_correction=True and no trust_clip. (optax's weight_decay mask only
    drops the decay; our `exclude` also sets the ratio to 1, so it is not compared.)"""
    params, grads = problem(1)
    theirs = optax_run(optax.lamb(1e-2, b1=0.9, b2=0.999, eps=1e-6, weight_decay=weight_decay),
                       params, grads)
    opt = fo.optim.LAMB(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=weight_decay)
    for g in grads:
        opt.step(g)
    assert_agree(params, theirs)


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_matches_optax(isa, nesterov):
    """optax.lars is add_decayed_weights, scale_by_trust_ratio (trust_coefficient *
    ||p|| / (||g + wd p|| + eps)), the learning rate, then the momentum trace: the lr
    sits inside the buffer (the paper's Algorithm 1), ours outside it (timm/NVIDIA), which
    is the same update while lr is constant. Its ratio divides by ||g + wd p|| where ours
    (the paper's) divides by ||g|| + wd ||p||: equal without weight decay, which is the
    configuration compared."""
    params, grads = problem(2)
    theirs = optax_run(optax.lars(0.1, weight_decay=0.0, trust_coefficient=0.02, eps=1e-8,
                                  momentum=0.9, nesterov=nesterov), params, grads)
    opt = fo.optim.LARS(params, lr=0.1, momentum=0.9, eta=0.02, eps=1e-8, nesterov=nesterov)
    for g in grads:
        opt.step(g)
    assert_agree(params, theirs)


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_lion_matches_optax(isa, weight_decay):
    """optax.lion is scale_by_lion (sign of b1 m + (1 - b1) g, then m = b2 m + (1 - b2) g),
    add_decayed_weights and the learning rate: p (1 - lr wd) - lr sign(...), ours. (optax's
    default weight_decay is 1e-3, ours 0.0: both are given.)"""
    params, grads = problem(3)
    theirs = optax_run(optax.lion(3e-3, b1=0.9, b2=0.99, weight_decay=weight_decay),
                       params, grads)
    opt = fo.optim.Lion(params, lr=3e-3, betas=(0.9, 0.99), weight_decay=weight_decay)
    for g in grads:
        opt.step(g)
    assert_agree(params, theirs)


def test_lars_with_weight_decay_differs_from_optax_as_documented():
    """With weight decay the two trust ratios differ (||g|| + wd ||p|| against
    ||g + wd p||); one step, from zero momentum, shows exactly that difference."""
    params, grads = problem(4)
    wd, eta, lr = 0.5, 0.02, 0.1
    theirs = optax_run(optax.lars(lr, weight_decay=wd, trust_coefficient=eta, eps=0.0,
                                  momentum=0.9), params, grads[:1])
    ours = [p.copy() for p in params]
    ratios = fo.lars_step(ours, grads[0], [np.zeros_like(p) for p in params], lr=lr,
                          momentum=0.9, weight_decay=wd, eta=eta, eps=0.0, first_step=True)
    for p, g, r, a, b in zip(params, grads[0], ratios, ours, theirs):
        p64, g64 = p.astype(np.float64), g.astype(np.float64)
        u = g64 + wd * p64
        optax_ratio = eta * np.linalg.norm(p64) / np.linalg.norm(u)
        np.testing.assert_allclose(b, p64 - lr * optax_ratio * u, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a, p64 - lr * r * u, rtol=1e-5, atol=1e-6)
        # ||g|| + wd ||p|| >= ||g + wd p||, equal for one element of the sign of its grad
        assert r < optax_ratio if p.size > 1 else r <= optax_ratio * (1 + 1e-12)
