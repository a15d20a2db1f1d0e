"""float64 NumPy references, written from the formulas in API.md (not from the kernels)."""

import numpy as np


def _f64(x):
    return np.asarray(x, dtype=np.float64)


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


# Batch norm

def _channel_view(v, ndim, channel_axis):
    """A per-channel vector shaped to broadcast against x."""
    shape = [1] * ndim
    shape[channel_axis % ndim] = -1
    return _f64(v).reshape(shape)


def _reduced_axes(ndim, channel_axis):
    return tuple(d for d in range(ndim) if d != channel_axis % ndim)


def batch_norm_forward_reference(x, weight=None, bias=None, running_mean=None,
                                 running_var=None, *, training=True, momentum=0.1, eps=1e-5,
                                 channel_axis=1):
    """Batch norm forward in float64.

    Returns (y, save_mean, save_invstd, new_running_mean, new_running_var); the running
    statistics are None when not given.
    """
    x = _f64(x)
    axes = _reduced_axes(x.ndim, channel_axis)

    def per_channel(v):
        return _channel_view(v, x.ndim, channel_axis)

    new_mean = None if running_mean is None else _f64(running_mean).copy()
    new_var = None if running_var is None else _f64(running_var).copy()
    if training:
        count = x.size // x.shape[channel_axis % x.ndim]
        mean = x.mean(axis=axes)
        var = ((x - per_channel(mean)) ** 2).mean(axis=axes)
        if running_mean is not None:
            new_mean = (1 - momentum) * new_mean + momentum * mean
            new_var = (1 - momentum) * new_var + momentum * var * count / (count - 1)
    else:
        mean = _f64(running_mean)
        var = _f64(running_var)
    invstd = 1.0 / np.sqrt(var + eps)
    y = (x - per_channel(mean)) * per_channel(invstd)
    if weight is not None:
        y = y * per_channel(weight)
    if bias is not None:
        y = y + per_channel(bias)
    return y, mean, invstd, new_mean, new_var


def batch_norm_backward_reference(dy, x, weight, save_mean, save_invstd, *, training=True,
                                  channel_axis=1):
    """Batch norm backward in float64: (dx, dweight, dbias), the last two None without
    weight."""
    dy = _f64(dy)
    x = _f64(x)
    axes = _reduced_axes(x.ndim, channel_axis)

    def per_channel(v):
        return _channel_view(v, x.ndim, channel_axis)

    count = x.size // x.shape[channel_axis % x.ndim]
    invstd = _f64(save_invstd)
    xhat = (x - per_channel(save_mean)) * per_channel(invstd)
    dbias = dy.sum(axis=axes)
    dweight = (dy * xhat).sum(axis=axes)
    w = np.ones_like(invstd) if weight is None else _f64(weight)
    if training:
        dx = per_channel(w * invstd) * (dy - per_channel(dbias) / count
                                        - xhat * per_channel(dweight) / count)
    else:
        dx = dy * per_channel(w * invstd)
    if weight is None:
        return dx, None, None
    return dx, dweight, dbias
