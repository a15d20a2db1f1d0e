"""bfloat16 without importing ml_dtypes at ``import fusedops``.

Importing ml_dtypes registers its dozen dtypes' casts and ufunc loops with NumPy, which
takes about a second (1.0-1.4 s on a 2-core AMD EPYC with NumPy 2.4 and ml_dtypes 0.7,
where NumPy itself imports in 0.16 s): it made ``import fusedops`` eight times slower than
``import numpy`` for every user, bfloat16 or not. ``fusedops.bfloat16`` now imports it on
first use (a module ``__getattr__``), and the dtype checks ask for it only when it is
already loaded: an array can only have the bfloat16 dtype once ml_dtypes (or JAX, or
anything else that imports it) has been imported. A dtype given by name
(``state_dtype="bfloat16"``) imports it, as NumPy only knows the name afterwards.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import numpy as np

_F16 = np.dtype(np.float16)
_found: Optional[np.dtype[Any]] = None


def loaded() -> Optional[np.dtype[Any]]:
    """NumPy's bfloat16 dtype if ml_dtypes has been imported in this process, else None."""
    global _found
    if _found is None:
        module = sys.modules.get("ml_dtypes")
        scalar = getattr(module, "bfloat16", None)  # None while ml_dtypes is still importing
        if scalar is not None:
            _found = np.dtype(scalar)
    return _found


def is_bfloat16(dtype: np.dtype[Any]) -> bool:
    found = loaded()
    return found is not None and dtype == found


def is_half(dtype: np.dtype[Any]) -> bool:
    """bfloat16 or float16."""
    return dtype == _F16 or is_bfloat16(dtype)


def scalar_type() -> type:
    """``ml_dtypes.bfloat16`` (imports ml_dtypes)."""
    from ml_dtypes import bfloat16
    return bfloat16


def as_dtype(spec: Any) -> np.dtype[Any]:
    """``np.dtype(spec)``; a name NumPy does not know yet ("bfloat16") is tried again after
    importing ml_dtypes. Raises TypeError as ``np.dtype`` does."""
    try:
        return np.dtype(spec)
    except TypeError:
        if not isinstance(spec, str) or "ml_dtypes" in sys.modules:
            raise
    scalar_type()
    return np.dtype(spec)
