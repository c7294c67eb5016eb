"""Command-line flags generated from the fields of a pydantic model: one name, default, help and check a setting.

A field ``name`` becomes the flag ``--<prefix><name>`` (underscores as dashes) with the argparse ``dest``
``<prefix><name>``; its type comes from the annotation, its help from the description and default. Flags default
to *absent* (``argparse.SUPPRESS``): :func:`given` returns only what was typed, so the model's defaults apply and
its validation (bounds, choices) is the only check; its errors are rendered by
:func:`bearing_core.params.error_line` with the flag's name.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pydantic.fields import FieldInfo


def flag(key: str) -> str:
    """``threshold_quantile`` -> ``--threshold-quantile``."""
    return "--" + key.replace("_", "-")


def _widths(text: str) -> tuple[int, ...]:
    """``"4,1,4"`` -> ``(4, 1, 4)`` (the model checks that they are positive)."""
    try:
        return tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _argument(info: FieldInfo) -> dict[str, Any]:
    """argparse keywords (type / action / metavar) for a field's annotation."""
    annotation = info.annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]  # X | None: the flag gives X
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is typing.Literal:
        return {"type": str, "metavar": "{" + ",".join(map(str, typing.get_args(annotation))) + "}"}
    if origin is tuple:
        return {"type": _widths, "metavar": "N,N,..."}
    if annotation is datetime:
        return {"type": datetime.fromisoformat, "metavar": "ISO_TIME"}
    if annotation in (int, float, str):
        return {"type": annotation}
    raise TypeError(f"no flag type for {annotation!r}")


def _default_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (str, tuple)) and not value:
        return "empty"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def add_field_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, key: str, info: FieldInfo, aliases: Iterable[str] = ()
) -> None:
    """``--<key>`` for the field ``info``; ``aliases``: older spellings, accepted but not shown in ``--help``."""
    kwargs = _argument(info)
    description = (info.description or info.title or "").replace("%", "%%")
    text = f"{description} (default: {_default_text(info.get_default(call_default_factory=True))})"
    parser.add_argument(flag(key), dest=key, default=argparse.SUPPRESS, help=text, **kwargs)
    for alias in aliases:
        parser.add_argument(alias, dest=key, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def add_model_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    fields: Mapping[str, FieldInfo],
    prefix: str = "",
    aliases: Mapping[str, Iterable[str]] | None = None,
) -> None:
    """One flag per field (``model.model_fields``): ``--<prefix><name>``."""
    for name, info in fields.items():
        add_field_argument(parser, prefix + name, info, (aliases or {}).get(prefix + name, ()))


def given(args: argparse.Namespace, fields: Iterable[str], prefix: str = "") -> dict[str, Any]:
    """The fields whose flag was given: ``{name: value}``."""
    return {name: getattr(args, prefix + name) for name in fields if hasattr(args, prefix + name)}
