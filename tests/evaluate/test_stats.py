"""Multi-seed mean and Student-t interval against tabulated t quantiles and direct formulas."""

import math

import numpy as np
import pytest

from sslx.evaluate import stats

# Two-sided 95% Student-t critical values t_{0.975, df} from the standard printed table.
T_975 = {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262, 29: 2.045}


@pytest.mark.parametrize("df", sorted(T_975))
def test_interval_matches_tabulated_t(df):
  values = np.random.default_rng(df).normal(0.8, 0.05, df + 1)
  got = stats.mean_interval(values)
  mean = sum(values) / len(values)
  sample_std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
  half = T_975[df] * sample_std / math.sqrt(len(values))
  assert got["n"] == df + 1
  assert got["mean"] == pytest.approx(mean, rel=1e-12)
  assert got["std"] == pytest.approx(sample_std, rel=1e-12)
  assert got["half_width"] == pytest.approx(half, rel=2e-4)  # the table has 4-5 digits
  assert got["low"] == pytest.approx(mean - half, rel=1e-3)
  assert got["high"] == pytest.approx(mean + half, rel=1e-3)


def test_other_confidence_and_single_value():
  # t_{0.95, 4} = 2.132 (a 90% two-sided interval).
  values = [0.70, 0.72, 0.69, 0.75, 0.71]
  got = stats.mean_interval(values, confidence=0.90)
  assert got["half_width"] == pytest.approx(2.132 * np.std(values, ddof=1) / math.sqrt(5),
                                            rel=2e-4)
  one = stats.mean_interval([0.5])
  assert one["mean"] == 0.5 and math.isnan(one["half_width"]) and math.isnan(one["low"])
  assert stats.format_interval(one) == "50.0"
  assert stats.format_interval(stats.mean_interval([0.9, 0.92])).startswith("91.0 ± ")
  for bad, match in (([], "values"), ([1.0, float("nan")], "values"), ([[1.0]], "values")):
    with pytest.raises(ValueError, match=match):
      stats.mean_interval(bad)
  with pytest.raises(ValueError, match="confidence"):
    stats.mean_interval([1.0, 2.0], confidence=95)


def test_over_seeds_runs_each_seed_and_summarises_nested_metrics():
  calls = []

  def protocol(seed):
    calls.append(seed)
    return {"top1": {1: 0.1 * seed, 5: 0.2 + 0.01 * seed}, "protocol": "text", "ok": True}

  result = stats.over_seeds(protocol, [3, 4, 5])
  assert calls == [3, 4, 5]
  assert set(result["summary"]) == {"top1/1", "top1/5"}
  assert result["summary"]["top1/1"]["mean"] == pytest.approx(0.4)
  assert result["summary"]["top1/5"]["n"] == 3
  assert result["per_seed"][4]["top1"][5] == pytest.approx(0.24)
  assert stats.over_seeds(lambda s: float(s), [1, 2])["summary"]["value"]["mean"] == 1.5
  with pytest.raises(ValueError, match="distinct"):
    stats.over_seeds(protocol, [1, 1])
  with pytest.raises(ValueError, match="same for every seed"):
    stats.over_seeds(lambda s: {"a": 1.0} if s == 0 else {"b": 1.0}, [0, 1])
