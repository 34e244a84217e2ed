"""What the API, the page and the CLI share: outcomes and cases of stored annotations from the store."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

from core.annotations.cases import CaseSet, Outcome, make_cases, outcome
from core.annotations.model import Annotation
from core.annotations.store import check, key_of
from core.config import FeaturesConfig
from core.data.store import MarketStore
from core.features import FeatureBuilder
from core.market.calendar import Calendar
from core.types import timeframe_ms


def outcome_of(store: MarketStore, a: Annotation) -> Outcome:
    """The outcome from the stored candles (the period is checked: no gap, inside the data)."""
    return outcome(a, check(store, a))


def cases_of(store: MarketStore, features: FeaturesConfig, annotations: Sequence[Annotation],
             calendar: Calendar | None = None) -> list[CaseSet]:
    """One CaseSet per series: the stored history up to the last annotated bar feeds the FeatureBuilder
    (only bars at or before each case matter: no look-ahead)."""
    out = []
    ordered = sorted(annotations, key=lambda a: (a.exchange, a.symbol, a.timeframe))
    for key, group in groupby(ordered, key=key_of):
        anns = list(group)
        builder = FeatureBuilder(features, key.timeframe, calendar)
        end = max(a.exit_ts for a in anns) + timeframe_ms(key.timeframe)
        candles = store.candles(key, None, end)
        out.append(make_cases(builder, candles, anns))
    return out
