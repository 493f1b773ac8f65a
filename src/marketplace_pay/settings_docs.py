"""Every setting with its environment variable, default and meaning — what `marketplace-pay
settings` prints and the README's Configuration table shows."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from dataclasses import fields

from marketplace_pay.settings import Settings, env_name, group_type


class Described(typing.NamedTuple):
    env: str
    value: str
    default: str
    doc: str


def describe(settings: Settings) -> Iterator[tuple[str, list[Described]]]:
    """Every setting with its environment variable, value (secrets hidden), default and meaning,
    per group (what `marketplace-pay settings` prints)."""
    for group in fields(Settings):
        kind = group_type(group.name)
        defaults = kind()
        rows = []
        for f in fields(kind):
            value, default = getattr(getattr(settings, group.name), f.name), getattr(defaults, f.name)
            shown = "(set, hidden)" if f.metadata["secret"] and value is not None else _show(value)
            if f.name == "instance_name":
                default = "<hostname>-<pid>"
            rows.append(Described(env_name(kind, f), shown, _show(default), f.metadata["doc"]))
        yield (kind.__doc__ or group.name).strip(), rows


def _show(value: object) -> str:
    return "(unset)" if value is None else str(value)
