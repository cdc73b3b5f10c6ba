"""Multi-seed summaries: the mean of a protocol's numbers over seeds and a Student-t interval.

A single seed hides how much a number moves with the randomness of a protocol (the few-shot
draws, a label fraction, the holdout split, a fine-tuning run). `over_seeds` runs a protocol once
per seed and reports, per metric, the mean and a two-sided ``confidence`` interval for it:
``mean +/- t_{(1 + confidence) / 2, n - 1} * s / sqrt(n)`` with ``s`` the sample standard
deviation (ddof = 1), the usual interval for the mean of n independent runs.
"""

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np


def mean_interval(values: Sequence[float], *, confidence: float = 0.95) -> dict:
  """The mean of ``values`` and its two-sided Student-t ``confidence`` interval.

  Returns ``{"mean", "std" (ddof=1), "low", "high", "half_width", "n", "confidence"}``; with a
  single value there is no spread to estimate, and std, half_width, low and high are NaN.
  """
  if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not (
      0.0 < confidence < 1.0):
    raise ValueError(f"confidence: expected a number in (0, 1), got {confidence!r}")
  x = np.asarray(values, np.float64)
  if x.ndim != 1 or x.size == 0:
    raise ValueError(f"values: expected a non-empty 1-D sequence of numbers, got shape {x.shape}")
  if not np.isfinite(x).all():
    raise ValueError(f"values: expected finite numbers, got {x.tolist()}")
  n = int(x.size)
  mean = float(x.mean())
  if n == 1:
    std = half = math.nan
  else:
    std = float(x.std(ddof=1))
    # Imported here: scipy.stats (a dependency of jax) takes ~2 s to import, and every training
    # process imports this package for its monitor.
    from scipy import stats as scipy_stats
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2.0, df=n - 1)) * std / math.sqrt(n)
  return {"mean": mean, "std": std, "low": mean - half, "high": mean + half, "half_width": half,
          "n": n, "confidence": float(confidence)}


def _flatten(result, prefix: str = "") -> dict:
  """{"a": {"b": 1.0}} -> {"a/b": 1.0}; non-numeric leaves (strings, booleans) are dropped."""
  if isinstance(result, Mapping):
    out = {}
    for key, value in result.items():
      out.update(_flatten(value, f"{prefix}{key}/"))
    return out
  if isinstance(result, (bool, np.bool_)) or not isinstance(result, (int, float, np.number)):
    return {}
  return {prefix.rstrip("/"): float(result)}


def over_seeds(protocol: Callable[[int], Mapping | float], seeds: Iterable[int], *,
               confidence: float = 0.95) -> dict:
  """Runs ``protocol(seed)`` for every seed and summarises each number it returns.

  ``protocol`` returns a float or a (nested) mapping of floats, e.g. ``{"top1": 0.91}`` or
  ``{"top1": {1: 0.4, 5: 0.7}}``; nested keys are joined with "/" ("top1/5"). Non-numeric
  entries are ignored. Returns ``{"per_seed": {seed: result}, "summary": {metric:
  mean_interval(...)}}``; a bare float is summarised under "value".
  """
  seeds = list(seeds)
  if not seeds:
    raise ValueError("seeds: expected at least one seed, got none")
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds: expected distinct seeds, got {seeds}")
  per_seed, flat = {}, []
  for seed in seeds:
    result = protocol(seed)
    per_seed[seed] = result
    flat.append(_flatten(result) if isinstance(result, Mapping) else _flatten({"value": result}))
  metrics = list(flat[0])
  for seed, row in zip(seeds, flat):
    if list(row) != metrics:
      raise ValueError(f"protocol returned metrics {sorted(row)} for seed {seed} but "
                       f"{sorted(metrics)} for seed {seeds[0]}; expected the same for every seed")
  summary = {m: mean_interval([row[m] for row in flat], confidence=confidence) for m in metrics}
  return {"per_seed": per_seed, "summary": summary}


def format_interval(summary: Mapping, *, percent: bool = True) -> str:
  """``mean_interval`` output as "91.2 ± 0.8" (percentages by default), or "91.2" for one seed."""
  scale = 100.0 if percent else 1.0
  if math.isnan(summary["half_width"]):
    return f"{scale * summary['mean']:.1f}"
  return f"{scale * summary['mean']:.1f} ± {scale * summary['half_width']:.1f}"
