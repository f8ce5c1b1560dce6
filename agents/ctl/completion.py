"""Shell completion generated from the argparse parser, so it never drifts from the CLI.

Pure: walks the parser and renders a bash script; knows nothing of the controller. Values
after --host, --flavor and --network come from `agentctl completion hosts|flavors|networks`
at completion time (asked of the controller's API with a short timeout).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse exposes no public walk of its tree
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> list[str]:
    # an option whose help is suppressed is kept for old scripts only: not offered
    return sorted(
        opt
        for a in parser._actions
        if a.help != argparse.SUPPRESS
        for opt in a.option_strings
        if opt.startswith("--")
    )


def _choices(parser: argparse.ArgumentParser) -> list[str]:
    return [
        str(c) for a in parser._actions if not a.option_strings and a.choices for c in a.choices
    ]


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], list[str]]]:
    """(command path, words to offer there) for every level of the command tree."""
    subs = _subparsers(parser)
    yield path, sorted(subs) + _options(parser) + (_choices(parser) if not subs else [])
    for name, sub in subs.items():
        yield from walk(sub, (*path, name))


def bash(parser: argparse.ArgumentParser) -> str:
    prog = parser.prog
    func = "_" + prog.replace("-", "_")
    cases = "\n".join(
        f'        "{" ".join(path)}") words="{" ".join(words)}" ;;' for path, words in walk(parser)
    )
    commands = " ".join(sorted({name for path, _ in walk(parser) for name in path}))
    return f"""# bash completion for {prog}; load with: source <({prog} completion bash)
{func}() {{
    local cur prev path="" word words
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    case "$prev" in
        --config-file) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --host|--flavor|--network)
            words="$({prog} completion "${{prev#--}}s" 2>/dev/null)"
            COMPREPLY=($(compgen -W "$words" -- "$cur")); return ;;
    esac
    for word in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case " {commands} " in
            *" $word "*) path="${{path:+$path }}$word" ;;
        esac
    done
    case "$path" in
{cases}
        *) words="" ;;
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -F {func} {prog}
"""
