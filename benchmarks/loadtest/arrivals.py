"""Open-loop arrival schedules: send times fixed in advance from a seed, whatever the server's backlog."""

from __future__ import annotations

import numpy as np

PROCESSES = ("constant", "poisson", "gamma")


def arrival_times(rate: float, duration: float, process: str = "poisson", burstiness: float = 1.0,
                  seed: int = 0) -> list[float]:
    """Send times in [0, duration) at `rate` requests/s. gamma: inter-arrival gaps drawn from a gamma
    distribution of shape `burstiness` and mean 1/rate (as vLLM's --burstiness: 1 is Poisson, lower is
    burstier); constant: evenly spaced."""
    if rate <= 0:
        raise ValueError(f"the request rate must be positive, got {rate}")
    n = int(rate * duration * 2) + 16
    if process == "constant":
        return [i / rate for i in range(n) if i / rate < duration]
    if process not in PROCESSES:
        raise ValueError(f"unknown arrival process {process!r}; known: {', '.join(PROCESSES)}")
    shape = 1.0 if process == "poisson" else burstiness
    if shape <= 0:
        raise ValueError(f"burstiness must be positive, got {burstiness}")
    gaps = np.random.default_rng(seed).gamma(shape, 1.0 / (rate * shape), size=n)
    times = np.concatenate([[0.0], np.cumsum(gaps)[:-1]])
    return [float(t) for t in times if t < duration]
