"""float64 NumPy references, written from the formulas in API.md (not from the kernels)."""

import numpy as np


def _f64(x):
    return np.asarray(x, dtype=np.float64)


# --- gradient clipping ------------------------------------------------------------------

def clip_reference(grads, max_norm, norm_type=2.0):
    """torch.nn.utils.clip_grad_norm_ in float64: returns (scaled grads, total norm).
    coef = min(1, max_norm / (total + 1e-6)); a NaN total gives a NaN coef."""
    total = norm_reference(grads, norm_type)
    coef = float(np.minimum(1.0, max_norm / (total + 1e-6)))
    return [_f64(g) * coef for g in grads], total


# --- optimizer steps and norms ----------------------------------------------------------


def sgd_reference(p, g, buf, *, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, l1=0.0,
                  nesterov=False, maximize=False, first_step=False, grad_scale=1.0):
    """One SGD step in float64; returns (new_p, new_buf) (new_buf None without momentum)."""
    p = _f64(p).copy()
    d = _f64(g) / grad_scale
    if maximize:
        d = -d
    d = d + weight_decay * p + l1 * np.sign(p)
    new_buf = None
    if momentum != 0:
        new_buf = d.copy() if first_step else momentum * _f64(buf) + (1 - dampening) * d
        d = d + momentum * new_buf if nesterov else new_buf
    return p - lr * d, new_buf


def adam_reference(p, g, m, v, vmax, *, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                   weight_decay=0.0, l1=0.0, decoupled_weight_decay=False, amsgrad=False,
                   maximize=False, grad_scale=1.0):
    """One Adam/AdamW step in float64; returns (p, m, v, vmax) (vmax None without amsgrad)."""
    beta1, beta2 = betas
    p = _f64(p).copy()
    d = _f64(g) / grad_scale
    if maximize:
        d = -d
    if decoupled_weight_decay:
        p = p * (1 - lr * weight_decay)
    else:
        d = d + weight_decay * p
    d = d + l1 * np.sign(p)
    m = beta1 * _f64(m) + (1 - beta1) * d
    v = beta2 * _f64(v) + (1 - beta2) * d * d
    bc1 = 1 - beta1**step
    bc2 = 1 - beta2**step
    new_vmax = None
    if amsgrad:
        new_vmax = np.maximum(_f64(vmax), v)
        denom = np.sqrt(new_vmax) / np.sqrt(bc2) + eps
    else:
        denom = np.sqrt(v) / np.sqrt(bc2) + eps
    return p - (lr / bc1) * m / denom, m, v, new_vmax


def norm_reference(grads, norm_type=2.0):
    """Global norm over a list of arrays, in float64."""
    flat = np.concatenate([_f64(g).ravel() for g in grads]) if grads else np.zeros(0)
    if np.isinf(norm_type):
        return float(np.max(np.abs(flat))) if flat.size else 0.0
    return float(np.sum(np.abs(flat) ** norm_type) ** (1.0 / norm_type))
