"""A reader of systemd unit files for the tests, written from systemd.syntax(7), systemd.unit(5),
systemd.service(5) and systemd.exec(5) (systemd 252's conf-parser, extract_first_word, cunescape,
replace_env), independent of how dsv4setup writes units.

- A line ends at \\n (the renderer refuses \\r and NUL, which systemd also takes as line ends).
  Leading and trailing whitespace is dropped; empty lines and lines starting with `#` or `;` are
  comments; a line ending in an odd number of backslashes continues on the next one (the backslash
  becomes a space). `[Name]` starts a section; every other line is `Key=value`.
- Specifiers: `%%` is a literal `%`; any other `%x` would be expanded (reported as an error here).
- ExecStart= words: an optional prefix of `@-:+!` on the first word; words split at unquoted
  whitespace, with single and double quotes removed and C escapes resolved; a bare `;` separates
  commands. Variables: in every word but the first, `$$` is a literal `$`, `${NAME}` anywhere and a
  word that starts with `$NAME` are substituted (reported as an error here).
- Environment= words: quoted and C-unescaped as above, each `NAME=value`, specifiers expanded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

WHITESPACE = " \t\n\r"
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\",
                   '"': '"', "'": "'", "s": " "}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class UnitSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Directive:
    section: str
    key: str
    value: str


def directives(text: str) -> list[Directive]:
    """Every `Key=value` of the file, in order, with its section."""
    found: list[Directive] = []
    section = ""
    pending: str | None = None
    for raw in text.split("\n"):
        line = raw.strip(WHITESPACE)
        if line[:1] in ("#", ";"):
            continue  # a comment, also inside a continued line
        if pending is not None:
            line = pending + raw.rstrip(WHITESPACE)
            pending = None
        if _ends_escaped(line):
            pending = line[:-1] + " "
            continue
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise UnitSyntaxError(f"bad section header: {line!r}")
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise UnitSyntaxError(f"missing '=': {line!r}")
        found.append(Directive(section, key.strip(WHITESPACE), value.strip(WHITESPACE)))
    if pending is not None:
        raise UnitSyntaxError("the file ends inside a continued line")
    return found


def _ends_escaped(line: str) -> bool:
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


def specifiers(text: str) -> str:
    """`%%` -> `%`; any other specifier is an error (dsv4setup writes none)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "%":
            if text[i + 1:i + 2] != "%":
                raise UnitSyntaxError(f"specifier %{text[i + 1:i + 2]} in {text!r}")
            out.append("%")
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _cunescape(text: str, i: int) -> tuple[str, int]:
    """The character that the escape at text[i] (just after the backslash) stands for, and the next index."""
    c = text[i:i + 1]
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c], i + 1
    for lead, digits, base in (("x", 2, 16), ("u", 4, 16), ("U", 8, 16)):
        if c == lead:
            return chr(int(text[i + 1:i + 1 + digits], base)), i + 1 + digits
    if c.isdigit():
        return chr(int(text[i:i + 3], 8)), i + 3
    raise UnitSyntaxError(f"bad escape \\{c} in {text!r}")


def words(text: str) -> list[tuple[str, str]]:
    """extract_first_word(EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE) over the whole value: (word, its raw text)."""
    found: list[tuple[str, str]] = []
    i = 0
    while True:
        while i < len(text) and text[i] in WHITESPACE:
            i += 1
        if i >= len(text):
            return found
        start, word, quote = i, [], ""
        while i < len(text):
            c = text[i]
            if c == "\\":
                char, i = _cunescape(text, i + 1)
                word.append(char)
                continue
            if quote:
                if c == quote:
                    quote = ""
                else:
                    word.append(c)
            elif c in "\"'":
                quote = c
            elif c in WHITESPACE:
                break
            else:
                word.append(c)
            i += 1
        if quote:
            raise UnitSyntaxError(f"unbalanced quote in {text!r}")
        found.append(("".join(word), text[start:i]))


def _variables(word: str) -> str:
    """replace_env() of one argument with no variables set: `$$` -> `$`; any substitution is an error."""
    if word.startswith("$") and word[1:2] not in ("{", "$"):
        raise UnitSyntaxError(f"whole-word variable {word!r}")
    out, i = [], 0
    while i < len(word):
        if word[i] == "$" and word[i + 1:i + 2] == "$":
            out.append("$")
            i += 2
        elif word[i] == "$" and word[i + 1:i + 2] == "{":
            raise UnitSyntaxError(f"variable ${{...}} in {word!r}")
        else:
            out.append(word[i])
            i += 1
    return "".join(out)


def exec_argv(value: str) -> list[str]:
    """The argv an ExecStart=/ExecStartPost= value runs (one command, no prefix, no substitution)."""
    parsed = words(value)
    if not parsed:
        raise UnitSyntaxError("empty command line")
    if any(raw == ";" for _, raw in parsed):
        raise UnitSyntaxError(f"a second command after ';' in {value!r}")
    first = parsed[0][0]
    if first[:1] in "@-:+!":
        raise UnitSyntaxError(f"command prefix {first[:1]!r} in {value!r}")
    # specifiers when the unit loads; variables (all words but the executable path) when it runs
    return [specifiers(first), *(_variables(specifiers(word)) for word, _ in parsed[1:])]


def environment(value: str) -> dict[str, str]:
    """The assignments of one Environment= value."""
    env: dict[str, str] = {}
    for word, _ in words(value):
        name, sep, val = specifiers(word).partition("=")
        if not sep or not _ENV_NAME.fullmatch(name):
            raise UnitSyntaxError(f"invalid environment assignment {word!r}")
        env[name] = val
    return env
