"""CLI flags generated from pydantic fields, so that a setting is declared once (model/options.py,
orchestrator/settings.py) and the command line follows it: `--steps-ratio`, `--dense/--no-dense`,
choices from Literals, help from descriptions. An optional number takes `none` to unset it.

Flags left out are absent from the parsed namespace (argparse.SUPPRESS), so only what the user typed
overrides the environment and the preset.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel


def _parts(annotation: Any) -> tuple[list[Any], bool]:
    """The non-None members of an annotation, and whether None is one of them."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return [a for a in args if a is not type(None)], type(None) in args
    return [annotation], False


def _converter(kind: type, optional: bool):
    def convert(text: str):
        if optional and text.lower() == "none":
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}{' or none' if optional else ''}, "
                                             f"got {text!r}") from None

    convert.__name__ = kind.__name__
    return convert


def add_flags(parser: argparse.ArgumentParser, model: type[BaseModel], only: set[str] | None = None,
              skip: set[str] = frozenset()) -> None:
    """One flag per field of `model` (those in `only`, if given, minus `skip`)."""
    for name, field in model.model_fields.items():
        if (only is not None and name not in only) or name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        members, optional = _parts(field.annotation)
        kind = members[0]
        default = "none" if field.default is None else field.default
        help_text = f"{field.description or ''} (default: {default})".strip()
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        elif typing.get_origin(kind) is Literal:
            parser.add_argument(flag, choices=list(typing.get_args(kind)), default=argparse.SUPPRESS,
                                help=help_text)
        elif kind in (int, float, str):
            parser.add_argument(flag, type=_converter(kind, optional), default=argparse.SUPPRESS,
                                metavar=kind.__name__.upper(), help=help_text)


def given(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The fields of `model` that the command line set."""
    return {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}
