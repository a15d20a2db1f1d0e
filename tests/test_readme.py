"""The README's API tour runs as written."""

import os
import re

import numpy as np

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_api_tour_runs():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    tour = text.split("## API tour", 1)[1]
    code = re.search(r"```python\n(.*?)```", tour, re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md (API tour)", "exec"), namespace)
    assert np.all(np.isfinite(namespace["params"][0]))
    assert namespace["applied"] is True
    assert namespace["dx"].shape == namespace["x"].shape
