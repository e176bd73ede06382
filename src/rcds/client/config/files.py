"""Reading CernVM-FS style ``KEY=VALUE`` configuration files without running a shell.

Stock CernVM-FS sources its configuration files with bash. rcds reads the same files but
evaluates only the assignment subset of shell syntax, so no configuration file can run code:

* blank lines and ``#`` comments (a ``#`` starts a comment at the start of a word), ``;`` and
  newlines separate statements, ``\\`` + newline continues a line;
* ``KEY=VALUE``, ``export KEY=VALUE``, several assignments in one statement (``A=1 B=2``), and
  ``export KEY`` (a no-op);
* values are shell words: unquoted text, ``'single quoted'`` (literal), ``"double quoted"``
  (``\\`` escapes ``$ ` " \\`` and newline) and backslash escapes, concatenated;
* ``$NAME`` and ``${NAME}`` expand to keys already defined (earlier in this file or in an
  earlier layer); an undefined name expands to the empty string, as in the shell, and is
  reported as a warning.

Anything needing a shell inside a value is **rejected** with :class:`~rcds.errors.ConfigError`
rather than kept literally, because a literal ``$(hostname)`` in a URL would silently produce a
wrong setting: command substitution (``$(...)``, backticks), arithmetic, other ``${...}`` forms,
special parameters (``$1``, ``$$`` ...), pipes and redirections. A statement that is not an
assignment at all (``if [ ... ]; then``, ``fi``, a command) is skipped with a warning, or rejected
when ``strict`` is true; the assignments inside an ``if`` block are all read (there is no shell to
decide the condition), which the warnings point out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rcds.errors import ConfigError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
_SPACED_ASSIGN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*[ \t]+=")
_SPECIAL_PARAMS = set("0123456789$?!#@*-")
_OPERATORS = set("|&<>()")


@dataclass(frozen=True, slots=True)
class Source:
    """Where a value came from: a file and line, or a pseudo-source such as ``<built-in default>``."""

    path: str
    line: int | None = None

    def __str__(self) -> str:
        return self.path if self.line is None else f"{self.path}:{self.line}"


@dataclass(frozen=True, slots=True)
class Assignment:
    """One ``KEY=VALUE`` assignment, with its value already unquoted and expanded."""

    key: str
    value: str
    source: Source


@dataclass(slots=True)
class ParsedFile:
    """The assignments of one file, in order, plus warnings about what was skipped."""

    assignments: list[Assignment] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class _Parser:
    """A one-pass lexer over the whole text (so quoted values may span lines)."""

    def __init__(self, text: str, origin: str, defined: Mapping[str, str], strict: bool) -> None:
        self.text = text
        self.origin = origin
        self.scope = dict(defined)
        self.strict = strict
        self.pos = 0
        self.line = 1
        self.out = ParsedFile()

    def error(self, message: str, line: int | None = None) -> ConfigError:
        return ConfigError(f"{self.origin}:{line or self.line}: {message}")

    def peek(self, offset: int = 0) -> str:
        i = self.pos + offset
        return self.text[i] if i < len(self.text) else ""

    def skip_blanks(self) -> None:
        while True:
            c = self.peek()
            if c in (" ", "\t", "\r"):
                self.pos += 1
            elif c == "\\" and self.peek(1) == "\n":
                self.pos += 2
                self.line += 1
            else:
                return

    def skip_comment(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end

    def parse(self) -> ParsedFile:
        while self.pos < len(self.text):
            self.skip_blanks()
            c = self.peek()
            if c == "":
                break
            if c in ("\n", ";"):
                self.line += c == "\n"
                self.pos += 1
            elif c == "#":
                self.skip_comment()
            else:
                self.statement()
        return self.out

    def statement(self) -> None:
        start_line = self.line
        exported = False
        if self.text.startswith("export", self.pos) and self.peek(6) in (" ", "\t"):
            self.pos += 6
            exported = True
            self.skip_blanks()
        count = 0
        while (m := _ASSIGN.match(self.text, self.pos)) is not None:
            self.pos = m.end()
            value = self.word()
            self.out.assignments.append(Assignment(m.group(1), value, Source(self.origin, start_line)))
            self.scope[m.group(1)] = value
            count += 1
            self.skip_blanks()
        while exported and (m := _NAME.match(self.text, self.pos)) is not None:
            self.pos = m.end()  # "export KEY": nothing to do without a shell environment
            count += 1
            self.skip_blanks()
        c = self.peek()
        if c == "#":
            self.skip_comment()
        elif c not in ("", "\n", ";"):
            if count == 0 and _SPACED_ASSIGN.match(self.text, self.pos):
                raise self.error(f"no spaces are allowed around '=' in {self.rest_of_line()!r}", start_line)
            if count:
                raise self.error(
                    f"unsupported shell syntax after an assignment: {self.rest_of_line()!r} "
                    "(quote values that contain spaces or ; | & < > ( ))",
                    start_line,
                )
            self.ignored(start_line)

    def rest_of_line(self) -> str:
        end = self.text.find("\n", self.pos)
        return self.text[self.pos : len(self.text) if end < 0 else end].strip()

    def ignored(self, start_line: int) -> None:
        snippet = self.rest_of_line()
        message = (
            f"{self.origin}:{start_line}: ignored shell statement {snippet!r}: rcds does not run a shell "
            "and reads only KEY=VALUE assignments (assignments inside if/else blocks all apply)"
        )
        if self.strict:
            raise ConfigError(message)
        self.out.warnings.append(message)
        while True:  # skip the statement, honouring backslash-newline continuations
            end = self.text.find("\n", self.pos)
            if end < 0:
                self.pos = len(self.text)
                return
            self.pos = end
            if end == 0 or self.text[end - 1] != "\\":
                return
            self.pos += 1
            self.line += 1

    def word(self) -> str:
        out: list[str] = []
        while True:
            c = self.peek()
            if c in ("", " ", "\t", "\r", "\n", ";"):
                return "".join(out)
            if c == "\\":
                nxt = self.peek(1)
                self.pos += 2
                if nxt == "\n":
                    self.line += 1
                else:
                    out.append(nxt)
            elif c == "'":
                end = self.text.find("'", self.pos + 1)
                if end < 0:
                    raise self.error("unterminated single quote")
                chunk = self.text[self.pos + 1 : end]
                self.line += chunk.count("\n")
                out.append(chunk)
                self.pos = end + 1
            elif c == '"':
                self.pos += 1
                out.append(self.double_quoted())
            elif c == "$":
                out.append(self.expansion())
            elif c == "`":
                raise self.error("command substitution with backticks is not supported (no shell is run)")
            elif c in _OPERATORS:
                raise self.error(
                    f"unsupported shell syntax {c!r} in a value; quote the value if {c!r} is meant literally"
                )
            else:
                out.append(c)
                self.pos += 1

    def double_quoted(self) -> str:
        out: list[str] = []
        start = self.line
        while True:
            c = self.peek()
            if c == "":
                raise self.error("unterminated double quote", start)
            if c == '"':
                self.pos += 1
                return "".join(out)
            if c == "\\":
                nxt = self.peek(1)
                if nxt == "\n":
                    self.line += 1
                elif nxt in ('"', "\\", "$", "`"):
                    out.append(nxt)
                else:
                    out.append("\\" + nxt)
                self.pos += 2
            elif c == "$":
                out.append(self.expansion())
            elif c == "`":
                raise self.error("command substitution with backticks is not supported (no shell is run)")
            else:
                self.line += c == "\n"
                out.append(c)
                self.pos += 1

    def expansion(self) -> str:
        nxt = self.peek(1)
        if nxt == "(":
            raise self.error("command substitution $(...) is not supported (no shell is run)")
        if nxt == "{":
            end = self.text.find("}", self.pos)
            inner = self.text[self.pos + 2 : end] if end >= 0 else ""
            if end < 0 or not _NAME.fullmatch(inner):
                raise self.error(
                    "only plain ${NAME} expansion is supported (no ${NAME:-default} or similar forms)"
                )
            self.pos = end + 1
            return self.lookup(inner)
        if nxt in _SPECIAL_PARAMS:
            raise self.error(f"special shell parameter ${nxt} is not supported (no shell is run)")
        m = _NAME.match(self.text, self.pos + 1)
        if m is None:
            self.pos += 1
            return "$"
        self.pos = m.end()
        return self.lookup(m.group(0))

    def lookup(self, name: str) -> str:
        value = self.scope.get(name)
        if value is None:
            self.out.warnings.append(f"{self.origin}:{self.line}: ${name} is not defined; it expands to ''")
            return ""
        return value


def parse_config_text(
    text: str, origin: str, defined: Mapping[str, str] | None = None, *, strict: bool = False
) -> ParsedFile:
    """Parse configuration text; ``defined`` holds the keys set by earlier layers (for ``$VAR``).

    ``origin`` names the text in sources and messages (normally the file path).
    Raises :class:`ConfigError` for syntax needing a shell (see the module docstring).
    """
    return _Parser(text, origin, defined or {}, strict).parse()


def read_config_file(
    path: Path, defined: Mapping[str, str] | None = None, *, strict: bool = False
) -> ParsedFile | None:
    """Parse one file; ``None`` if it does not exist. Unreadable or non-UTF-8 files are ConfigErrors."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigError(f"configuration file {path} is a directory; expected KEY=VALUE text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"configuration file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    return parse_config_text(text, str(path), defined, strict=strict)
