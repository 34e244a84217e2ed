"""Williams market structure on real BTC/USDT 1m candles: definition, nesting, confirmation delays,
no look-ahead, and the compiled live path equal to the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.data.files import load_file as load_candles
from core.pivots import (
    MAX_LEVELS,
    latest_confirmed,
    market_structure,
    support_resistance,
    support_resistance_fast,
)

N_BARS = 8_000


@pytest.fixture(scope="module")
def hl(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    df = load_candles(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[:N_BARS]
    return df.high.to_numpy(), df.low.to_numpy()


def test_level1_matches_definition(hl) -> None:
    """Brute force: a level-1 high is strictly above the `strength` highs on each side."""
    h, lo = hl
    for s in (1, 2, 3):
        ms = market_structure(h, lo, levels=1, strength=s)
        exp_hi = [
            i for i in range(s, len(h) - s) if all(h[i] > h[j] for j in range(i - s, i + s + 1) if j != i)
        ]
        exp_lo = [
            i for i in range(s, len(lo) - s) if all(lo[i] < lo[j] for j in range(i - s, i + s + 1) if j != i)
        ]
        assert ms.highs[0].index.tolist() == exp_hi
        assert ms.lows[0].index.tolist() == exp_lo
        assert np.array_equal(ms.highs[0].confirm, ms.highs[0].index + s)
        assert np.array_equal(ms.highs[0].price, h[ms.highs[0].index])


def test_levels_nested_and_confirmation_delays(hl) -> None:
    h, lo = hl
    ms = market_structure(h, lo, levels=MAX_LEVELS, strength=2, higher_strength=1)
    for kind in ("high", "low"):
        counts = [len(ms.level(k, kind).index) for k in range(1, MAX_LEVELS + 1)]
        assert all(a > b for a, b in zip(counts, counts[1:], strict=False)), counts
        assert counts[MAX_LEVELS - 1] > 0  # 8000 real bars reach level 5
        for k in range(2, MAX_LEVELS + 1):
            lv, below = ms.level(k, kind), ms.level(k - 1, kind)
            pos = np.searchsorted(below.index, lv.index)
            # nested: every level-k pivot is a level-(k-1) pivot
            assert np.array_equal(below.index[pos], lv.index)
            # swing point among the level below: beats its neighbours there
            sign = 1 if kind == "high" else -1
            assert np.all(sign * below.price[pos] > sign * below.price[pos - 1])
            assert np.all(sign * below.price[pos] > sign * below.price[pos + 1])
            # confirmed when the next level-(k-1) pivot is confirmed: strictly later than that
            # pivot's own confirmation, never before bar index + strength
            assert np.array_equal(lv.confirm, below.confirm[pos + 1])
            assert np.all(lv.confirm > below.confirm[pos])
            assert np.all(lv.confirm >= lv.index + 2)
            assert np.all(np.diff(lv.confirm) > 0)


def test_no_look_ahead(hl) -> None:
    """Pivots confirmed by t are found from bars <= t alone, and support/resistance at <= t does not
    move when every later bar changes."""
    h, lo = hl
    full = market_structure(h, lo, levels=4)
    for t in (1234, 4000, 7001):
        cut = market_structure(h[: t + 1], lo[: t + 1], levels=4)
        for k in range(1, 5):
            for kind in ("high", "low"):
                a, b = full.level(k, kind), cut.level(k, kind)
                known = a.confirm <= t
                assert np.array_equal(a.index[known], b.index[b.confirm <= t]), (t, k, kind)
        h2, lo2 = h.copy(), lo.copy()
        h2[t + 1 :] *= 1.5
        lo2[t + 1 :] *= 0.5
        s1, r1 = support_resistance(full, 4)
        s2, r2 = support_resistance(market_structure(h2, lo2, levels=4), 4)
        np.testing.assert_array_equal(s1[: t + 1], s2[: t + 1])
        np.testing.assert_array_equal(r1[: t + 1], r2[: t + 1])
        assert not np.array_equal(r1[t + 1 :], r2[t + 1 :], equal_nan=True)


def test_support_resistance_by_hand(hl) -> None:
    h, lo = hl
    ms = market_structure(h, lo, levels=3)
    sup, res = support_resistance(ms, 3)
    assert sup.shape == res.shape == (len(h), 3)
    for k in range(3):
        lv = ms.highs[k]
        for t in (500, 3333, 7999):
            known = np.flatnonzero(lv.confirm <= t)
            assert res[t, k] == lv.price[known[-1]]
        assert np.isnan(res[: lv.confirm[0], k]).all()
    assert np.array_equal(latest_confirmed(ms.lows[0], len(h)), sup[:, 0], equal_nan=True)


def test_fast_path_equals_reference(hl, shared_data: Path) -> None:
    h, lo = hl
    for levels, s, hs in ((5, 2, 1), (3, 1, 1), (5, 3, 2)):
        ref = support_resistance(market_structure(h, lo, levels, s, hs), levels)
        fast = support_resistance_fast(h, lo, levels, s, hs)
        for a, b in zip(ref, fast, strict=True):
            assert np.array_equal(a, b, equal_nan=True)
    # tiny alt/BTC prices
    ada = load_candles(shared_data / "freqtrade" / "ADA_BTC-5m.csv")
    ms = market_structure(ada.high.to_numpy(), ada.low.to_numpy(), levels=3)
    assert len(ms.highs[2].index) > 0 and ms.highs[2].price.max() < 1e-3
    ref = support_resistance(ms, 3)
    fast = support_resistance_fast(ada.high.to_numpy(), ada.low.to_numpy(), 3)
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(ref, fast, strict=True))


def test_bad_arguments(hl) -> None:
    """Hand-made edge cases."""
    h, lo = hl
    with pytest.raises(ValueError, match="levels"):
        market_structure(h, lo, levels=6)
    with pytest.raises(ValueError, match="strength"):
        market_structure(h, lo, strength=0)
    with pytest.raises(ValueError, match="equal length"):
        market_structure(h, lo[:-1])
    short = market_structure(h[:3], lo[:3], levels=2)  # too short for any pivot: empty, not an error
    assert len(short.highs[0].index) == 0 and len(short.highs[1].index) == 0
