"""What every ``bearing`` command shares: the one-line form of a pydantic error."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pydantic is imported by the commands that raise its errors, not for `bearing --help`
    from pydantic import ValidationError


def validation_message(exc: ValidationError) -> str:
    """One line for the first pydantic error: ``field: message`` (without pydantic's ``Value error, ``)."""
    error = exc.errors()[0]
    location = ".".join(str(part) for part in error.get("loc", ()))
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{location}: {message}" if location else message
