"""The soak's memory statistic: a saw-shaped RSS (batches in flight come and go) that holds its
peaks is flat; rising peaks are growth, whatever phase of the saw the last sample falls in."""

from __future__ import annotations

from bench.soak import peak_growth, slope_per_min


def _saw(seconds: int, *, low: float, high: float, period: int, rise_per_s: float = 0.0):  # type: ignore[no-untyped-def]
    return [(float(t), (high if t % period == 0 else low) + rise_per_s * t) for t in range(seconds)]


def test_a_saw_that_holds_its_peaks_is_flat_wherever_it_ends() -> None:
    ends_low = _saw(121, low=400, high=500, period=7)
    assert ends_low[0][1] == 500 and ends_low[-1][1] == 400
    assert peak_growth(ends_low) == 0.0
    assert peak_growth(ends_low[1:]) == 0.0  # starts in a trough, ends anywhere


def test_rising_peaks_are_growth() -> None:
    leak = _saw(120, low=400, high=500, period=7, rise_per_s=1.0)  # 60 MiB a minute
    assert 55 <= peak_growth(leak) <= 65
    assert 55 <= slope_per_min(leak) <= 65


def test_too_few_samples_are_no_growth() -> None:
    assert peak_growth([]) == 0.0
    assert peak_growth([(0.0, 100.0)]) == 0.0
