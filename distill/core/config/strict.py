"""The base of every config model: unknown keys are errors, assignments are validated, and a
boolean is no number (pydantic's lax mode reads `lr = true` as 1.0 and `max_steps = true` as 1)."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


def _numbers_only(annotation: Any) -> bool:
    """Whether a field's type takes numbers and nothing else (int, float, or optional ones)."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(a in (int, float) for a in args)
    return False


class BooleanNumber(ValueError):
    """A boolean given for a number-only field (the loader names the key `field` under the section)."""

    def __init__(self, field: str, value: bool):
        super().__init__(f"expected a number, got the boolean {str(value).lower()}")
        self.field, self.value = field, value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_boolean_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name) if isinstance(value, bool) else None
                if field is not None and _numbers_only(field.annotation):
                    raise BooleanNumber(name, value)
        return data
