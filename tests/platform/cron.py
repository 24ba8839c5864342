"""Whether a cron schedule is one Kubernetes' CronJob and the Spark Operator (robfig/cron) both run.

Five fields (minute, hour, day of month, month, day of week), each a list of `*`, values, ranges and steps, with
month and weekday names; or a macro such as `@hourly`. `@every` is the operator's alone and is refused here.
"""

from __future__ import annotations

MACROS = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_WEEKDAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
# (lowest, highest, names from the lowest on) per field.
_FIELDS = (
    (0, 59, []),
    (0, 23, []),
    (1, 31, []),
    (1, 12, _MONTHS),
    (0, 7, _WEEKDAYS),
)


def is_valid_cron(schedule: str) -> bool:
    if schedule in MACROS:
        return True
    fields = schedule.split(" ")
    return len(fields) == len(_FIELDS) and all(
        _valid_field(field, low, high, names)
        for field, (low, high, names) in zip(fields, _FIELDS, strict=True)
    )


def _valid_field(field: str, low: int, high: int, names: list[str]) -> bool:
    for part in field.split(","):
        span, slash, step = part.partition("/")
        if slash and not (step.isdigit() and int(step) >= 1):
            return False
        if span in {"*", "?"}:
            continue
        bounds = [_value(v, low, names) for v in span.split("-")]
        if len(bounds) > 2 or any(b is None or not low <= b <= high for b in bounds):
            return False
        if len(bounds) == 2 and bounds[0] > bounds[1]:
            return False
    return True


def _value(text: str, low: int, names: list[str]) -> int | None:
    if text.isdigit():
        return int(text)
    return names.index(text.upper()) + low if text.upper() in names else None
