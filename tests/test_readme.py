"""Every ``partlens ...`` command the README (and docs/*.md) shows exists in the CLI and answers ``--help``."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_INLINE = re.compile(r"`([^`\n]+)`")
# ``partlens`` as a command: at a line start, after whitespace/quote/paren, or as ``<venv>/bin/partlens``
_INVOCATION = re.compile(r"(?:^|(?<=[\s(\"'])|(?<=/bin/))partlens(?=[ \t]+([^\n]*))", re.M)
_WORD = re.compile(r"^[a-z][a-z0-9-]*$")
_STOP = {"#", ";", "&&", "||", "|", ">", ">>", "<"}


def _snippets(text: str) -> list[str]:
    """Fenced code blocks (continuation lines joined) and inline code spans (table pipes ``\\|`` unescaped)."""
    blocks = [b.replace("\\\n", " ") for b in _FENCE.findall(text)]
    prose = _FENCE.sub("", text)
    return [s.replace("\\|", "|") for s in blocks + _INLINE.findall(prose)]


def _expand(words: list[list[str]]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = [()]
    for alternatives in words:
        out = [prefix + (w,) for prefix in out for w in alternatives]
    return out


def readme_invocations(path: Path = README) -> list[tuple[tuple[str, ...], frozenset[str]]]:
    """Every ``partlens`` invocation shown in ``path``: (leading command words, long options used).

    Words are taken up to the first option, placeholder (CAPS, ``...``, paths) or shell operator;
    ``a|b|c`` alternatives are expanded. Positional arguments that look like words (``bench sync``)
    are kept here and told apart from subcommands by :func:`resolve`. Options are the ``--name``
    tokens before the first shell operator or comment.
    """
    found: list[tuple[tuple[str, ...], frozenset[str]]] = []
    for snippet in _snippets(path.read_text(encoding="utf-8")):
        for m in _INVOCATION.finditer(snippet):
            words: list[list[str]] = []
            options: set[str] = set()
            in_words = True
            for tok in m.group(1).split():
                if tok in _STOP or tok.startswith("#"):
                    break
                alternatives = tok.split("|")
                if in_words and all(_WORD.match(a) for a in alternatives):
                    words.append(alternatives)
                    continue
                in_words = False
                opt = tok.strip("[]")
                if opt.startswith("--") and len(opt) > 2:
                    options.add(opt.split("=")[0])
            for cmd in _expand(words):
                if cmd and (cmd, frozenset(options)) not in found:
                    found.append((cmd, frozenset(options)))
    return found


def readme_commands(path: Path = README) -> list[tuple[str, ...]]:
    """The distinct command word tuples of :func:`readme_invocations`, in order of appearance."""
    out: list[tuple[str, ...]] = []
    for cmd, _ in readme_invocations(path):
        if cmd not in out:
            out.append(cmd)
    return out


def _parser_for(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> argparse.ArgumentParser:
    for w in path:
        parser = _subcommands(parser)[w]
    return parser


def unknown_options(parser: argparse.ArgumentParser, cmd: tuple[str, ...], options: frozenset[str]) -> list[str]:
    """The options in ``options`` that ``partlens CMD`` does not accept."""
    known = set(_parser_for(parser, resolve(parser, cmd))._option_string_actions)
    return sorted(options - known)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return None


def resolve(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> tuple[str, ...]:
    """The subcommand path ``words`` names; words after a leaf command are its positionals.

    Raises ``KeyError`` naming the first word that is not a subcommand where one is expected.
    """
    path: list[str] = []
    for w in words:
        subs = _subcommands(parser)
        if subs is None:
            break
        if w not in subs:
            raise KeyError(f"partlens {' '.join([*path, w])}: no such command (known: {', '.join(sorted(subs))})")
        path.append(w)
        parser = subs[w]
    return tuple(path)


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    from edge_app.cli import build_parser

    return build_parser()


def check_help(parser: argparse.ArgumentParser, cmd: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    """``partlens CMD --help`` exits 0 and prints its usage; returns the help text."""
    path = resolve(parser, cmd)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([*path, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0, f"partlens {' '.join(path)} --help exited {exc.value.code}"
    assert out.startswith("usage: partlens " + " ".join(path)), out[:200]
    return out


#: The README and the documents it sends readers to (docs/*.md) are checked alike.
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
COMMANDS = list(dict.fromkeys(c for doc in DOCUMENTS for c in readme_commands(doc)))
WITH_OPTIONS = list(dict.fromkeys((c, o) for doc in DOCUMENTS for c, o in readme_invocations(doc) if o))


def test_readme_shows_commands() -> None:
    shown = readme_commands()
    assert len(shown) >= 10, shown
    assert ("demo",) in shown  # the main job, in the set-up block's comment
    assert len(DOCUMENTS) >= 5, DOCUMENTS  # docs/*.md are found and checked too


@pytest.mark.parametrize("cmd", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_readme_command_exists_and_has_help(parser: argparse.ArgumentParser, cmd: tuple[str, ...],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    check_help(parser, cmd, capsys)


@pytest.mark.parametrize("cmd,options", WITH_OPTIONS,
                         ids=[" ".join(c) + " " + " ".join(sorted(o)) for c, o in WITH_OPTIONS])
def test_readme_command_options_exist(parser: argparse.ArgumentParser, cmd: tuple[str, ...],
                                      options: frozenset[str]) -> None:
    assert unknown_options(parser, cmd, options) == [], f"partlens {' '.join(cmd)}"


def test_extraction_and_rejection(tmp_path: Path, parser: argparse.ArgumentParser,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "README.md"
    doc.write_text(
        "Run `partlens bundle build\\|verify` and `partlens frobnicate --fast`.\n"
        "```bash\n.venv/bin/partlens hub review list --hub H   # then partlens sync run --no-upload\n"
        "partlens generate OUT \\\n    --seed 3 --warp 9\nsee ~/.config/partlens/keys and bin/partlens-0.1.0.apk\n"
        "partlens hub teleport X\n```\n", encoding="utf-8")
    inv = readme_invocations(doc)
    assert inv == [(("hub", "review", "list"), frozenset({"--hub"})), (("sync", "run"), frozenset({"--no-upload"})),
                   (("generate",), frozenset({"--seed", "--warp"})), (("hub", "teleport"), frozenset()),
                   (("bundle", "build"), frozenset()), (("bundle", "verify"), frozenset()),
                   (("frobnicate",), frozenset({"--fast"}))]
    cmds = readme_commands(doc)
    assert cmds == [c for c, _ in inv]
    for good in cmds[:3] + cmds[4:6]:
        check_help(parser, good, capsys)
    assert unknown_options(parser, ("hub", "review", "list"), inv[0][1]) == []
    assert unknown_options(parser, ("generate",), inv[2][1]) == ["--warp"]  # a made-up option is caught
    assert resolve(parser, ("bench", "sync")) == ("bench",)  # a positional after a leaf command
    for bad in (("frobnicate",), ("hub", "teleport")):
        with pytest.raises(KeyError, match="no such command"):
            check_help(parser, bad, capsys)
        with pytest.raises(SystemExit) as exc:  # argparse agrees
            parser.parse_args([*bad, "--help"])
        assert exc.value.code == 2
