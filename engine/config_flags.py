"""Command-line flags generated from a config dataclass, so that each flag is declared once.

Every entry point that builds an engine (``python -m engine.serve``, the benchmarks) used to
declare its own ``--max-model-len``, ``--mesh``, ... with its own types and checks, and they
drifted apart. Here a field's metadata (``flag_field``) carries only what the field cannot say
itself: help text, help group, other spellings (vLLM's ``-tp``, older names), the parser of its
value, choices. The rest follows from the field: the flag is ``--field-name``, its default is
the field's, a bool becomes ``--x/--no-x``, and the value lands under the field's name, so
``config_values`` reads the config straight back. engine/config.py applies this to EngineConfig.

The value parsers live here too; a bad value is a usage error (exit 2) that names the flag and
says what is wrong. The mesh and rules parsers run the very checks the engine runs when it
builds (sharding/), so a spec the parser accepts is one the engine accepts.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any

from sharding.mesh import parse_mesh_spec
from sharding.rules import load_rules

_FLAG_KEY = "flag"
_SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "K": 2**10, "M": 2**20, "G": 2**30}


@dataclasses.dataclass(frozen=True)
class Switch:
    """One more flag that sets the field to a fixed value (``--no-compilation-cache``: None)."""

    flag: str
    value: Any
    help: str


@dataclasses.dataclass(frozen=True)
class Flag:
    """How a config field appears on the command line."""

    help: str
    group: str = "engine"
    aliases: tuple[str, ...] = ()  # more spellings: "-tp", or a name the flag had before
    parse: Callable[[str], Any] | None = None  # the value's parser; default: the field's type
    choices: tuple[Any, ...] | None = None
    metavar: str | None = None
    default_text: str | None = None  # the default in words, when the field's value does not say it
    switches: tuple[Switch, ...] = ()


def flag_field(default: Any = None, *, factory: Callable[[], Any] | None = None, **flag: Any) -> Any:
    """A dataclass field with a command-line flag: ``flag_field(256, help="...", metavar="N")``."""
    metadata = {_FLAG_KEY: Flag(**flag)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def add_config_flags(parser: argparse.ArgumentParser, config_cls: type, *, defaults: Mapping[str, Any],
                     skip: Collection[str] = (), only: Collection[str] | None = None,
                     ) -> dict[str, argparse._ArgumentGroup]:
    """One flag per field of ``config_cls`` that has a Flag (``skip`` and ``only`` select fields);
    ``defaults`` overrides field defaults. Returns the help groups by title, for the caller's own
    flags of the same kind."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        flag = field.metadata.get(_FLAG_KEY)
        if flag is None or field.name in skip or (only is not None and field.name not in only):
            continue
        if flag.group not in groups:
            groups[flag.group] = parser.add_argument_group(flag.group)
        overridden = field.name in defaults
        default = defaults[field.name] if overridden else _field_default(field)
        _add_flag(groups[flag.group], field.name, flag, _value_type(hints[field.name]), default,
                  None if overridden else flag.default_text)
    return groups


def config_values(config_cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``config_cls`` that parsed flags set (fields without a flag are left out)."""
    names = {field.name for field in dataclasses.fields(config_cls)}
    return {name: value for name, value in vars(args).items() if name in names}


def _add_flag(group: argparse._ArgumentGroup, name: str, flag: Flag, kind: Any, default: Any,
              default_text: str | None) -> None:
    names = [f"--{name.replace('_', '-')}", *flag.aliases]
    help_text = flag.help + _default_note(default, default_text)
    if kind is bool:
        group.add_argument(*names, dest=name, action=argparse.BooleanOptionalAction, default=default,
                           help=help_text)
    else:
        group.add_argument(*names, dest=name, type=flag.parse or kind, default=default,
                           choices=flag.choices, metavar=flag.metavar, help=help_text)
    for switch in flag.switches:
        group.add_argument(switch.flag, dest=name, action="store_const", const=switch.value, help=switch.help)


def _default_note(default: Any, default_text: str | None) -> str:
    if default_text is not None:
        return f" (default: {default_text})"
    if isinstance(default, bool):
        return f" (default: {'on' if default else 'off'})"
    return "" if default is None else " (default: %(default)s)"


def _field_default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _value_type(hint: Any) -> Any:
    """``int | None`` -> int: what a given value must be."""
    kinds = [kind for kind in typing.get_args(hint) if kind is not type(None)]
    return kinds[0] if len(kinds) == 1 else hint


# ---- value parsers ------------------------------------------------------------------------------
def human_int(text: str) -> int:
    """vLLM's human-readable sizes: ``32k`` = 32,000, ``32K`` = 32,768, ``1.5M`` = 1,572,864."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgKMG]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 4096, 32k = 32000, 32K = 32768)")
    value = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number of tokens")
    return int(value)


def size_list(text: str) -> tuple[int, ...]:
    """``16,64,256``: positive whole numbers, comma-separated."""
    try:
        values = [human_int(item) for item in text.split(",") if item.strip()]
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of sizes such as 16,64,256")
    return tuple(values)


def mesh_spec(text: str) -> str:
    """``tp=4`` or ``dp=2,tp=2``, checked by the mesh's own parser (sharding/mesh.py); spaces dropped."""
    try:
        parse_mesh_spec(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text.replace(" ", "")


def rules_spec(text: str) -> str:
    """A rule set name or a JSON/YAML rules file, checked by the loader the engine uses (sharding/rules.py)."""
    try:
        load_rules(text)
    except (ValueError, OSError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text
