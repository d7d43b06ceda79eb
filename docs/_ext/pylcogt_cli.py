"""Sphinx extension: the command-line reference, generated from pylcogt's own argparse parser.

``.. pylcogt-cli::`` renders ``pylcogt --help`` and the ``--help`` of every subcommand, nested
subcommands included (``pylcogt db upgrade``, ``pylcogt calibrations mark-bad``...), each in a
section of its own with the help text as a literal block. The parser is imported from the code
(:func:`pylcogt.cli.build_parser`), so the reference cannot drift from the command.

Options:

``:prog:``   the program name shown (default ``pylcogt``)
``:width:``  the help text's width in columns (default 100)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

# section underlines below the page title (which uses '=')
_UNDERLINES = "-~^\"'"


def subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``(name, parser)`` of each subcommand of ``parser``, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases share a parser
                    seen.add(id(sub))
                    yield name, sub


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser below ``parser`` (itself first), depth first, with its command path."""
    yield path, parser
    for name, sub in subcommands(parser):
        yield from walk(sub, (*path, name))


@contextmanager
def _columns(width: int) -> Iterator[None]:
    """argparse wraps help to ``$COLUMNS - 2``: make it a fixed width, whatever the terminal."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width + 2)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved


def help_text(
    parser: argparse.ArgumentParser, *, width: int, drop_epilog: str | None = None
) -> str:
    """``parser``'s ``--help`` at ``width`` columns; without its epilog when it is
    ``drop_epilog`` (the top-level epilog that every subcommand repeats)."""
    epilog = parser.epilog
    if drop_epilog is not None and epilog == drop_epilog:
        parser.epilog = None
    try:
        with _columns(width):
            return parser.format_help().rstrip()
    finally:
        parser.epilog = epilog


class PylcogtCliDirective(SphinxDirective):
    """``.. pylcogt-cli::``: the help of the command and of every subcommand."""

    has_content = False
    option_spec = {"prog": directives.unchanged, "width": directives.positive_int}

    def run(self) -> list[nodes.Node]:
        from pylcogt.cli import build_parser

        prog = self.options.get("prog", "pylcogt")
        width = self.options.get("width", 100)
        top = build_parser()
        lines: list[str] = []
        for path, parser in walk(top):
            title = " ".join((prog, *path))
            if path:  # the top-level help comes first, under the page's own title
                underline = _UNDERLINES[min(len(path) - 1, len(_UNDERLINES) - 1)]
                heading = f"``{title}``"
                lines += [".. _cli-" + "-".join(path) + ":", "", heading]
                lines += [underline * len(heading), ""]
            text = help_text(parser, width=width, drop_epilog=None if not path else top.epilog)
            lines += [".. code-block:: text", ""]
            lines += [("   " + line).rstrip() for line in text.splitlines()]
            lines.append("")
        return self._parse(lines)

    def _parse(self, lines: list[str]) -> list[nodes.Node]:
        source = self.get_source_info()[0]
        content = StringList(lines, source=f"{source}:<pylcogt-cli>")
        try:  # Sphinx >= 7.4
            from sphinx.util.parsing import nested_parse_to_nodes

            return nested_parse_to_nodes(self.state, content, allow_section_headings=True)
        except ImportError:  # pragma: no cover - older Sphinx
            from sphinx.util.nodes import nested_parse_with_titles

            node = nodes.section()
            node.document = self.state.document
            nested_parse_with_titles(self.state, content, node)
            return node.children


def setup(app: Sphinx) -> dict:
    app.add_directive("pylcogt-cli", PylcogtCliDirective)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
