"""`--help` that reads like a man page, whichever Typer release draws it.

Recent Typer releases (0.2x, with Rich) label each parameter with its Python annotation
(`--dry-run <bool>`, `--output <str>`, `INPUT... <list[str]>`), write a required variadic
argument as `{INPUT...}...`, and keep the hard line breaks of a help text's later paragraphs, so
that at 80 columns every source line wraps a second time. `ManPageGroup` is the root command
class: when Typer builds the command tree it walks it once and gives

- every option that takes a value a metavar (an explicit one wins; else PATH, N, FLOAT, TEXT or
  the choices `a|b|c`), and flags none,
- every argument its metavar alone, written in usage as `INPUT...` (`[INPUT]...` if optional),
- every help text paragraphs that reflow (a paragraph starting with `\\b` keeps its lines, as in
  Click).

Older Typer releases draw Click's own metavars (TEXT, INTEGER) and never show flag types; there
the walk changes nothing but the help paragraphs.
"""

from __future__ import annotations

import typing
from pathlib import PurePath

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

NO_REWRAP = "\b"


def reflow(text: str | None) -> str | None:
    """Join the lines of each paragraph, so the terminal alone decides where lines break."""
    if not text:
        return text
    paragraphs = typing.cast(str, _dedent(text)).split("\n\n")
    return "\n\n".join(p if p.lstrip("\n").startswith(NO_REWRAP) else " ".join(p.split()) for p in paragraphs)


def _dedent(text: str) -> str:
    import inspect

    return inspect.cleandoc(text)


class _ManPageArgument(TyperArgument):
    """An argument shown by its metavar alone: `INPUT...` in usage, no `<list[str]>` type label."""

    def display_type_rich(self, ctx: typing.Any) -> str | None:  # Typer >= 0.2x
        return None

    def _rich_display_name(self) -> str:
        return self._plain_name()

    def _usage_display_name(self) -> str:
        name = self._plain_name()
        if self.required or self.metavar:  # an explicit metavar is written as its author wrote it
            return name
        return f"[{name.removesuffix('...')}]..." if name.endswith("...") else f"[{name}]"

    def _plain_name(self) -> str:
        name = self.metavar or (self.name or "").upper()
        if self.nargs != 1 and not name.endswith("..."):
            name += "..."
        return name


def _metavar(param: TyperOption) -> str | None:
    """The man-page metavar of an option without one, from Typer's type description; None: leave as is."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    described = getattr(param, "type_descriptor", None)
    if described is None:  # an older Typer: Click's metavars (TEXT, INTEGER, [a|b]) already read well
        return None
    if described.is_choice:
        return "|".join(str(getattr(choice, "value", choice)) for choice in described.choices)
    if described.is_path or described.is_file:
        return "PATH"
    annotation = described.annotation
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return "PATH"
    return {int: "N", float: "FLOAT"}.get(annotation, "TEXT")


def _as_flag(option: typing.Any) -> typing.Any:
    """`--help` is a flag like the others: no `<bool>` (Click builds it per context, not in `params`)."""
    if option is not None and getattr(option, "type_descriptor", None) is not None:
        option.metavar = ""
    return option


class _ManPageCommand(TyperCommand):
    def get_help_option(self, ctx: typing.Any) -> typing.Any:
        return _as_flag(super().get_help_option(ctx))


def polish(command: typing.Any) -> None:
    """Give `command` and everything below it man-page metavars, usage and reflowing help."""
    command.help = reflow(command.help)
    if type(command) is TyperCommand:
        command.__class__ = _ManPageCommand
    elif type(command) is TyperGroup:
        command.__class__ = ManPageGroup  # its __init__ has run already; polish() walks it here
    for param in command.params:
        if isinstance(param, TyperArgument) and type(param) is TyperArgument:
            param.__class__ = _ManPageArgument  # same object and state, only the display methods differ
            if param.metavar is None and param.name:  # NAMES..., as a man page writes it, not names...
                param.metavar = param.name.upper() + ("..." if param.nargs != 1 else "")
        elif isinstance(param, TyperOption) and param.metavar is None:
            metavar = _metavar(param)
            if metavar is not None:
                param.metavar = metavar
    for sub in getattr(command, "commands", {}).values():
        polish(sub)


class ManPageGroup(TyperGroup):
    """The root `stablesr` group: polishes the whole command tree once, when Typer builds it."""

    def __init__(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        super().__init__(*args, **kwargs)
        polish(self)

    def get_help_option(self, ctx: typing.Any) -> typing.Any:
        return _as_flag(super().get_help_option(ctx))
