"""One cleaning step for candle batches of any market: validate (with the market's calendar) and keep the
configured session. Imports, downloads and replays use it, so a stock file stores the same bars whichever
way it came in (the live path does the same inside DataProvider.ingest)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from core.data.validate import ValidationResult, validate_candles
from core.market.calendar import Calendar
from core.market.sessions import SessionSplit, align_daily, filter_session


@dataclass(frozen=True)
class Cleaned:
    candles: pd.DataFrame  # valid bars of the configured session, ts ascending as given
    validation: ValidationResult  # rejected rows with their reasons
    session: SessionSplit  # bars filtered out as not in the configured session (not errors)

    def filtered_text(self) -> str:
        """``filtered 2,558 outside the session (pre 1,380, post 1,178)``; "" when nothing was."""
        s = self.session
        if not s.filtered:
            return ""
        detail = ", ".join(f"{k} {v:,}" for k, v in (("pre", s.pre), ("post", s.post),
                                                      ("straddling", s.straddling)) if v)
        return f"filtered {s.filtered:,} outside the session ({detail})"

    def summary(self) -> str:
        """``rejected 131 (out_of_order=1, outside_session=130), filtered 2,558 outside the session (...)``."""
        text = f"rejected {self.validation.n_rejected}"
        if self.validation.counts:
            text += " (" + ", ".join(f"{k}={v}" for k, v in sorted(self.validation.counts.items())) + ")"
        return ", ".join(p for p in (text, self.filtered_text()) if p)


def clean_candles(df: pd.DataFrame, timeframe: str, calendar: Calendar | None = None, *, source: str = "",
                  now_ms: int | None = None, last_ts: int | None = None, max_future_ms: int = 5_000) -> Cleaned:
    """Vendor daily bars -> session opens, validation (``outside_session`` for bars on no trading day),
    then the configured session. ``calendar`` None or 24x7: validation only, exactly as before."""
    if calendar is not None and not calendar.always_open:
        df = align_daily(df, calendar, timeframe)
    res = validate_candles(df, timeframe, now_ms, last_ts, max_future_ms=max_future_ms, source=source,
                           calendar=calendar)
    split = filter_session(res.valid, calendar, timeframe) if calendar is not None else SessionSplit(res.valid, 0)
    return Cleaned(split.kept, res, split)
