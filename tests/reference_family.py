"""float64 NumPy references of the family optimizers, written from torch.optim 2.13's
update rules (Adagrad, RMSprop, Adamax, NAdam, RAdam), Chen et al. 2023 (Lion), You et al.
2019 (LAMB) and You et al. 2017 (LARS), not from the kernels.

Each takes the param, grad and a dict of state arrays and returns (new_param, new_state).
"""

import numpy as np


def _f64(x):
    return np.array(x, dtype=np.float64)


def _grad(p, g, *, lr=0.0, weight_decay=0.0, l1=0.0, decoupled=False, maximize=False,
          grad_scale=1.0):
    """The gradient the update uses, and the param after decoupled decay."""
    p = _f64(p)
    d = _f64(g) / grad_scale
    if maximize:
        d = -d
    if decoupled:
        p = p * (1 - lr * weight_decay)
    else:
        d = d + weight_decay * p
    return p, d + l1 * np.sign(p)


def adagrad(p, g, state, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10, l1=0.0,
            maximize=False, grad_scale=1.0):
    p, d = _grad(p, g, weight_decay=weight_decay, l1=l1, maximize=maximize, grad_scale=grad_scale)
    s = _f64(state["sum"]) + d * d
    clr = lr / (1 + (step - 1) * lr_decay)
    return p - clr * d / (np.sqrt(s) + eps), {"sum": s}


def rmsprop(p, g, state, *, step=None, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
            momentum=0.0, centered=False, l1=0.0, maximize=False, grad_scale=1.0):
    p, d = _grad(p, g, weight_decay=weight_decay, l1=l1, maximize=maximize, grad_scale=grad_scale)
    out = {}
    sq = alpha * _f64(state["square_avg"]) + (1 - alpha) * d * d
    out["square_avg"] = sq
    if centered:
        ga = alpha * _f64(state["grad_avg"]) + (1 - alpha) * d
        out["grad_avg"] = ga
        avg = np.sqrt(sq - ga * ga) + eps
    else:
        avg = np.sqrt(sq) + eps
    if momentum > 0:
        buf = momentum * _f64(state["momentum_buffer"]) + d / avg
        out["momentum_buffer"] = buf
        return p - lr * buf, out
    return p - lr * d / avg, out


def adamax(p, g, state, *, step, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
           l1=0.0, maximize=False, grad_scale=1.0):
    b1, b2 = betas
    p, d = _grad(p, g, weight_decay=weight_decay, l1=l1, maximize=maximize, grad_scale=grad_scale)
    m = b1 * _f64(state["exp_avg"]) + (1 - b1) * d
    u = np.maximum(b2 * _f64(state["exp_inf"]), np.abs(d) + eps)
    return p - lr / (1 - b1**step) * m / u, {"exp_avg": m, "exp_inf": u}


def nadam_mu(beta1, momentum_decay, t):
    return beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))


def nadam(p, g, state, *, step, mu_product, lr=2e-3, betas=(0.9, 0.999), eps=1e-8,
          weight_decay=0.0, momentum_decay=4e-3, decoupled_weight_decay=False, l1=0.0,
          maximize=False, grad_scale=1.0):
    """mu_product: the product of mu_t over the steps before this one."""
    b1, b2 = betas
    p, d = _grad(p, g, lr=lr, weight_decay=weight_decay, l1=l1, decoupled=decoupled_weight_decay,
                 maximize=maximize, grad_scale=grad_scale)
    mu = nadam_mu(b1, momentum_decay, step)
    mu_next = nadam_mu(b1, momentum_decay, step + 1)
    prod = mu_product * mu
    m = b1 * _f64(state["exp_avg"]) + (1 - b1) * d
    v = b2 * _f64(state["exp_avg_sq"]) + (1 - b2) * d * d
    denom = np.sqrt(v / (1 - b2**step)) + eps
    p = p - lr * (1 - mu) / (1 - prod) * d / denom - lr * mu_next / (1 - prod * mu_next) * m / denom
    return p, {"exp_avg": m, "exp_avg_sq": v}


def radam(p, g, state, *, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
          decoupled_weight_decay=False, l1=0.0, maximize=False, grad_scale=1.0):
    b1, b2 = betas
    p, d = _grad(p, g, lr=lr, weight_decay=weight_decay, l1=l1, decoupled=decoupled_weight_decay,
                 maximize=maximize, grad_scale=grad_scale)
    m = b1 * _f64(state["exp_avg"]) + (1 - b1) * d
    v = b2 * _f64(state["exp_avg_sq"]) + (1 - b2) * d * d
    bc1, bc2 = 1 - b1**step, 1 - b2**step
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * step * b2**step / bc2
    if rho_t > 5:
        rect = np.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        p = p - lr * (m / bc1) * rect * np.sqrt(bc2) / (np.sqrt(v) + eps)
    else:
        p = p - lr * m / bc1
    return p, {"exp_avg": m, "exp_avg_sq": v}


def lion(p, g, state, *, step=None, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, l1=0.0,
         maximize=False, grad_scale=1.0):
    b1, b2 = betas
    p, d = _grad(p, g, lr=lr, weight_decay=weight_decay, l1=l1, decoupled=True, maximize=maximize,
                 grad_scale=grad_scale)
    m = _f64(state["exp_avg"])
    p = p - lr * np.sign(b1 * m + (1 - b1) * d)
    return p, {"exp_avg": b2 * m + (1 - b2) * d}


def _norm(x):
    return float(np.sqrt(np.sum(_f64(x) ** 2)))


def lamb(params, grads, exp_avgs, exp_avg_sqs, *, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-6,
         weight_decay=0.0, bias_correction=True, trust_clip=None, exclude=None, l1=0.0,
         maximize=False, grad_scale=1.0, store=None):
    """LAMB over a list of tensors: (params, exp_avgs, exp_avg_sqs, trust ratios).
    store(i, m, v) -> (m, v), if given, gives the moments as tensor i's state stores them
    (16-bit state: rounded); the update and its norm are computed from those."""
    b1, b2 = betas
    exclude = exclude or [False] * len(params)
    out = ([], [], [], [])
    for i, (p, g, m, v, skip) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, exclude)):
        p, d = _grad(p, g, l1=l1, maximize=maximize, grad_scale=grad_scale)
        m = b1 * _f64(m) + (1 - b1) * d
        v = b2 * _f64(v) + (1 - b2) * d * d
        if store is not None:
            m, v = (_f64(x) for x in store(i, m, v))
        bc1, bc2 = (1 - b1**step, 1 - b2**step) if bias_correction else (1.0, 1.0)
        u = (m / bc1) / (np.sqrt(v / bc2) + eps) + (0.0 if skip else weight_decay) * p
        ratio = 1.0
        if not skip and _norm(p) > 0 and _norm(u) > 0:
            ratio = _norm(p) / _norm(u)
            if trust_clip is not None:
                ratio = min(ratio, trust_clip)
        for seq, value in zip(out, (p - lr * ratio * u, m, v, ratio)):
            seq.append(value)
    return out


def lars(params, grads, bufs, *, lr, momentum=0.9, dampening=0.0, weight_decay=0.0, eta=1e-3,
         eps=1e-8, nesterov=False, trust_clip=False, first_step=False, exclude=None, l1=0.0,
         maximize=False, grad_scale=1.0):
    """LARS over a list of tensors: (params, momentum buffers, trust ratios)."""
    exclude = exclude or [False] * len(params)
    out = ([], [], [])
    for p, g, buf, skip in zip(params, grads, bufs, exclude):
        p, d = _grad(p, g, maximize=maximize, grad_scale=grad_scale)
        wd = 0.0 if skip else weight_decay
        ratio = 1.0
        if not skip and _norm(p) > 0 and _norm(d) > 0:
            ratio = eta * _norm(p) / (_norm(d) + weight_decay * _norm(p) + eps)
            if trust_clip and lr > 0:
                ratio = min(ratio / lr, 1.0)
        d = ratio * (d + wd * p + l1 * np.sign(p))
        new_buf = None
        if momentum != 0:
            new_buf = d if first_step else momentum * _f64(buf) + (1 - dampening) * d
            d = d + momentum * new_buf if nesterov else new_buf
        for seq, value in zip(out, (p - lr * d, new_buf, ratio)):
            seq.append(value)
    return out
