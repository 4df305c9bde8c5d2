"""The billing grid: ISO 8601 durations, period boundaries and exact proration.

DESIGN.md section 7: period k of a subscription is ``[anchor ⊕ k·cadence,
anchor ⊕ (k+1)·cadence)``, every boundary computed from the anchor, never from the
previous boundary, so the month-end clamp does not stick: anchor Jan 31 gives Feb 28
(or 29), Mar 31, Apr 30, May 31, ... A duration is applied the ISO way: years and months
first (the day clamped to the last day of the month reached), then weeks, days, hours,
minutes and seconds as exact elapsed time (UTC has no DST). ``P0D`` means "once": it
has no grid.

Proration is exact: the fraction of a period a window covers is a ``Fraction`` of
elapsed time (to the microsecond; billing instants are whole seconds, so in practice a
ratio of seconds), and nothing is rounded here.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Final

from libs.core.errors import InvalidArgument

__all__ = [
    "Duration",
    "Period",
    "add",
    "boundaries_between",
    "boundary",
    "index_at",
    "parse_duration",
    "period",
    "prorate",
    "proration",
]

# A duration component may have at most this many digits: far beyond any sane cadence
# or advance, and it keeps a hostile "P99999999999999999999Y" from reaching arithmetic.
_MAX_DIGITS: Final = 9
_MAX_TEXT: Final = 64

_DURATION = re.compile(
    r"P(?:(?P<years>[0-9]+)Y)?(?:(?P<months>[0-9]+)M)?(?:(?P<weeks>[0-9]+)W)?(?:(?P<days>[0-9]+)D)?"
    r"(?:T(?:(?P<hours>[0-9]+)H)?(?:(?P<minutes>[0-9]+)M)?(?:(?P<seconds>[0-9]+)S)?)?"
)
_FIELDS: Final = ("years", "months", "weeks", "days", "hours", "minutes", "seconds")

_ONE_MICROSECOND: Final = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Duration:
    """A non-negative ISO 8601 duration of whole units (no fractions)."""

    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    hours: int = 0
    minutes: int = 0
    seconds: int = 0

    def __post_init__(self) -> None:
        for name in _FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Duration.{name} must be a non-negative int, got {value!r}")

    @property
    def total_months(self) -> int:
        """The calendar part: years and months, in months."""
        return self.years * 12 + self.months

    @property
    def elapsed(self) -> timedelta:
        """The exact part: weeks, days, hours, minutes, seconds."""
        return timedelta(weeks=self.weeks, days=self.days, hours=self.hours, minutes=self.minutes, seconds=self.seconds)

    @property
    def is_zero(self) -> bool:
        """``P0D`` (and ``PT0S``, ...): no time at all; as a cadence it means once."""
        return self.total_months == 0 and self.elapsed == timedelta(0)

    @property
    def approx_seconds(self) -> int:
        """A mean length (a month = 2,629,746 s, the Gregorian average); for estimates only."""
        return self.total_months * 2_629_746 + int(self.elapsed.total_seconds())

    def __str__(self) -> str:
        """The canonical ISO text ("P1M", "P1Y2M3DT4H5M6S", "P0D")."""
        if self.is_zero:
            return "P0D"
        date = "".join(f"{v}{u}" for v, u in ((self.years, "Y"), (self.months, "M"), (self.weeks, "W"), (self.days, "D")) if v)
        time = "".join(f"{v}{u}" for v, u in ((self.hours, "H"), (self.minutes, "M"), (self.seconds, "S")) if v)
        return f"P{date}" + (f"T{time}" if time else "")


def parse_duration(text: object, field: str) -> Duration:
    """Parse an ISO 8601 duration such as ``P1M``, ``P7D``, ``PT2H``, ``P2W`` or
    ``P1Y2M3DT4H5M6S``; ``P0D`` is a zero duration (a once cadence).

    Refused, with an InvalidArgument naming ``field`` (reason INVALID_DURATION): anything
    not a string, negative durations (``-P1D``: time only moves forward), fractions
    (``PT0.5S``), lower-case designators, an empty ``P`` or ``PT``, and components of more
    than 9 digits.
    """
    if not isinstance(text, str):
        raise _invalid(field, f'must be an ISO 8601 duration string such as "P1M", got {text!r}')
    if len(text) > _MAX_TEXT:
        raise _invalid(field, f"is longer than {_MAX_TEXT} characters")
    if text.startswith("-") or text.startswith("+"):
        raise _invalid(field, f"must not be signed: a duration is a positive length of time, got {text!r}")
    if any(ch in text for ch in ".,"):
        raise _invalid(field, f"must use whole units (no fractions such as PT0.5S), got {text!r}")
    if text != text.upper():
        raise _invalid(field, f'must use upper-case designators ("P1M", "PT2H"), got {text!r}')
    match = _DURATION.fullmatch(text)
    if match is None or text in ("P", "PT") or text.endswith("T"):
        raise _invalid(field, f'must be an ISO 8601 duration such as "P1M", "P7D", "PT2H" or "P1Y2M3DT4H5M6S", got {text!r}')
    parts = match.groupdict()
    values: dict[str, int] = {}
    for name in _FIELDS:
        digits = parts[name]
        if digits is None:
            continue
        if len(digits.lstrip("0")) > _MAX_DIGITS:
            raise _invalid(field, f"{name} of {text!r} has more than {_MAX_DIGITS} digits")
        values[name] = int(digits)
    return Duration(**values)


def _invalid(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(field, f"{field} {message}", reason="INVALID_DURATION")


def _as_duration(value: Duration | str) -> Duration:
    return value if isinstance(value, Duration) else parse_duration(value, "billingCadence")


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"grid instants must be timezone-aware, got {value!r}")
    return value.astimezone(UTC)


def _add_months(t: datetime, months: int) -> datetime:
    """``t`` moved by whole calendar months, the day clamped to the month's last day."""
    if months == 0:
        return t
    years, month0 = divmod(t.month - 1 + months, 12)
    year = t.year + years
    if not 1 <= year <= 9999:
        raise OverflowError(f"{t.isoformat()} + {months} months is outside the calendar")
    month = month0 + 1
    day = min(t.day, calendar.monthrange(year, month)[1])
    return t.replace(year=year, month=month, day=day)


def add(t: datetime, duration: Duration | str, times: int = 1, *, field: str = "advanceBy") -> datetime:
    """``t ⊕ times·duration`` (``times`` may be negative: back from ``t``): the calendar
    part first with the month-end clamp, then the exact part. Computed in one go from
    ``t``, so ``add(t, P1M, 3)`` is Jan 31 -> Apr 30 and not Jan 31 -> Feb 28 -> Mar 28 ->
    Apr 28. A result outside the calendar (past year 9999) is an InvalidArgument of
    ``field`` (reason DURATION_OUT_OF_RANGE)."""
    d = _as_duration(duration)
    start = _utc(t)
    try:
        return _add_months(start, d.total_months * times) + d.elapsed * times
    except OverflowError as exc:
        raise InvalidArgument(
            field, f"{field} moves {start.isoformat()} beyond the representable calendar", reason="DURATION_OUT_OF_RANGE"
        ) from exc


def _grid_cadence(cadence: Duration | str) -> Duration:
    d = _as_duration(cadence)
    if d.is_zero:
        raise ValueError("a once cadence (P0D) has no period grid")
    return d


def boundary(anchor: datetime, cadence: Duration | str, k: int) -> datetime:
    """Boundary k of the grid: ``anchor ⊕ k·cadence``, computed from the anchor (k may be
    negative: the grid extends before its anchor)."""
    return add(anchor, _grid_cadence(cadence), k, field="billingCadence")


@dataclass(frozen=True, slots=True)
class Period:
    """Period ``index`` of a grid: ``[start, end)``."""

    index: int
    start: datetime
    end: datetime

    def __contains__(self, t: object) -> bool:
        return isinstance(t, datetime) and self.start <= t < self.end


def period(anchor: datetime, cadence: Duration | str, k: int) -> Period:
    """Period k: ``[boundary(k), boundary(k+1))``."""
    d = _grid_cadence(cadence)
    return Period(k, boundary(anchor, d, k), boundary(anchor, d, k + 1))


def index_at(anchor: datetime, cadence: Duration | str, t: datetime) -> int:
    """The k with ``boundary(k) <= t < boundary(k+1)`` (negative before the anchor)."""
    d = _grid_cadence(cadence)
    a, when = _utc(anchor), _utc(t)
    k = int((when - a).total_seconds() // d.approx_seconds)  # an estimate, then exact steps
    while boundary(a, d, k) > when:
        k -= 1
    while boundary(a, d, k + 1) <= when:
        k += 1
    return k


def boundaries_between(anchor: datetime, cadence: Duration | str, after: datetime, upto: datetime) -> list[tuple[int, datetime]]:
    """The boundaries b_k with ``after < b_k <= upto``, in order, with their k: what an
    advance from ``after`` to ``upto`` passes."""
    d = _grid_cadence(cadence)
    if upto <= after:
        return []
    first, last = index_at(anchor, d, after) + 1, index_at(anchor, d, upto)
    return [(k, boundary(anchor, d, k)) for k in range(first, last + 1)]


def _micros(delta: timedelta) -> int:
    return delta // _ONE_MICROSECOND


def proration(window_start: datetime, window_end: datetime, period_start: datetime, period_end: datetime) -> Fraction:
    """The exact share of ``[period_start, period_end)`` that ``[window_start, window_end)``
    covers: window length / period length (1 for the whole period, 0 for an empty window).
    The window must lie inside the period."""
    period_len = _micros(period_end - period_start)
    if period_len <= 0:
        raise ValueError("a period must have a positive length")
    if window_start < period_start or window_end > period_end:
        raise ValueError("the window must lie inside its period")
    window_len = _micros(window_end - window_start)
    if window_len < 0:
        raise ValueError("a window must not end before it starts")
    return Fraction(window_len, period_len)


def prorate(amount: int | Decimal | Fraction, share: Fraction) -> Fraction:
    """``amount x share`` exactly (a Fraction: a third of a period is not a finite decimal)."""
    if isinstance(amount, bool):
        raise TypeError("amount must be a number, not bool")
    return Fraction(amount) * share
