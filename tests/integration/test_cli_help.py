"""Every command, subcommand, option and argument of ``fedlora`` has a help text."""

from __future__ import annotations

import argparse

from fedlora.cli import build_parser


def _missing(parser: argparse.ArgumentParser, path: str) -> list[str]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if not helps.get(name):
                    out.append(f"{path} {name}")
                out += _missing(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction) and not (
            action.help
        ):
            out.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return out


def test_every_command_and_option_has_a_help_text() -> None:
    assert _missing(build_parser(), "fedlora") == []
