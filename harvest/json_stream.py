"""A JSON file read as a stream: decoded text in a window, walked value by value.

Generic over the JSON's meaning (harvest/export.py gives it Telegram Desktop's schema): the
structure is walked key by key and element by element, each small value is decoded whole by
the standard library's C scanner, so memory stays flat, the speed is the C parser's, and every
broken spot is reported with its line and column. Nothing here knows what a chat is.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from harvest.errors import ExportFormatError, HarvestError
from storage.errors import os_error_line

CHUNK_BYTES = 1 << 20
#: Characters kept ahead of the position before a value is decoded, so a value rarely
#: straddles the end of the window and has to be decoded twice.
LOOKAHEAD_CHARS = 1 << 16
#: No value the caller wants comes near this; one that does not end within it is a broken
#: file, not a long text.
MAX_VALUE_CHARS = 1 << 24
#: Containers being skipped are decoded whole when they end within this window and walked
#: element by element when they do not.
SKIP_WINDOW_CHARS = 1 << 20
#: Containers inside containers deeper than this are a broken (or hostile) file.
MAX_DEPTH = 200

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SEPARATOR = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*")
_HEX_ESCAPE = re.compile(r"\\x([0-9A-Fa-f]{2})")
_scan = json.scanner.make_scanner(json.JSONDecoder())  # the C scanner where available
_TOO_LARGE = object()


class JsonStream:
    """The part of the file being parsed: decoded text, a position in it, and where it lies."""

    def __init__(self, path: Path, file: BinaryIO) -> None:
        self.path = path
        self.text = ""
        self.pos = 0
        self.eof = False
        self.bytes_read = 0
        #: Where the last value decoded by `value()` began, as an index into `text`.
        self.value_start = 0
        self._file = file
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self._lines_before = 0
        self._column_before = 0

    def read_more(self) -> None:
        """Drop the text before `pos` and append the next chunk; sets `eof` at the end."""
        while not self.eof:
            try:
                raw = self._file.read(CHUNK_BYTES)
            except OSError as error:
                raise HarvestError(
                    f"{self.path}: reading failed at byte {self.bytes_read} "
                    f"({os_error_line(error)}); what was read before it is kept"
                ) from error
            try:
                decoded = self._decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as error:
                if not raw and error.reason == "unexpected end of data":
                    raise ExportFormatError(
                        f"{self.path}: the file ends in the middle of a character at byte "
                        f"{self.bytes_read + error.start} (truncated? export it again)"
                    ) from None
                raise ExportFormatError(
                    f"{self.path}: not UTF-8 text at byte {self.bytes_read + error.start}: "
                    "is it the JSON file Telegram Desktop wrote?"
                ) from None
            self.bytes_read += len(raw)
            self.eof = not raw
            if decoded or self.eof:
                self._drop_consumed()
                self.text += decoded
                return

    def _drop_consumed(self) -> None:
        pos, text = self.pos, self.text
        if not pos:
            return
        newlines = text.count("\n", 0, pos)
        if newlines:
            self._lines_before += newlines
            self._column_before = pos - text.rfind("\n", 0, pos) - 1
        else:
            self._column_before += pos
        self.text = text[pos:]
        self.pos = 0

    def peek(self) -> str:
        """The next character that is not whitespace ("" at the end of the file)."""
        while True:
            self.pos = _WHITESPACE.match(self.text, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.text):
                return self.text[self.pos]
            if self.eof:
                return ""
            self.read_more()

    def expect(self, char: str, what: str) -> None:
        found = self.peek()
        if found != char:
            raise self._unexpected(found, repr(char), what)
        self.pos += 1

    def value(self, what: str, limit: int | None = None) -> Any:
        """Decode the JSON value at the position and step over it.

        A value that does not end within `limit` characters is a broken file, or, when a
        limit below `MAX_VALUE_CHARS` is given, `_TOO_LARGE` for the caller to walk instead.
        """
        limit = MAX_VALUE_CHARS if limit is None else limit
        if self.peek() == "":
            raise self.error(f"the file ends where {what} should be (truncated?)")
        while True:
            if not self.eof and len(self.text) - self.pos < LOOKAHEAD_CHARS:
                self.read_more()
                continue
            try:
                result, end = _scan(self.text, self.pos)
            except (StopIteration, json.JSONDecodeError) as error:
                # Both also mean "the value goes on past the window" (the C scanner raises
                # StopIteration for a value cut short inside a container).
                if isinstance(error, json.JSONDecodeError) and self._repair_hex_escape(error):
                    continue
                if not self.eof and len(self.text) - self.pos < limit:
                    self.read_more()
                    continue
                if limit < MAX_VALUE_CHARS:
                    return _TOO_LARGE
                if not self.eof and _goes_on(error):
                    raise self.error(
                        f"{what} goes on for more than {limit:,} characters without ending: "
                        "the file is damaged (no text in it is that long)"
                    ) from None
                if isinstance(error, StopIteration):
                    found = self.text[error.value] if error.value < len(self.text) else ""
                    raise self._unexpected(found, "a value", what) from None
                if self.eof and (
                    error.pos >= len(self.text.rstrip()) or error.msg.startswith("Unterminated")
                ):
                    raise self.error(
                        f"the file ends in the middle of {what} (truncated? export it again)",
                        error.pos,
                    ) from None
                raise self.error(_problem(error, self.text, what), error.pos) from None
            except RecursionError:
                raise self.error(
                    f"{what} nests arrays or objects inside each other too deep: the file is "
                    "damaged"
                ) from None
            except ValueError as error:  # a number of more than 4300 digits
                raise self.error(f"{what} holds a number too long to read ({error})") from None
            if end == len(self.text) and not self.eof:  # a number may go on in the next chunk
                self.read_more()
                continue
            self.value_start = self.pos
            self.pos = end
            return result

    def _repair_hex_escape(self, error: json.JSONDecodeError) -> bool:
        r"""Telegram Desktop writes control characters as `\x1F`, which JSON lacks: use `\u001F`."""
        if not error.msg.startswith("Invalid \\escape"):
            return False
        found = _HEX_ESCAPE.match(self.text, error.pos)
        if found is None:
            return False
        self.text = f"{self.text[: error.pos]}\\u00{found[1]}{self.text[found.end() :]}"
        return True

    def members(self, what: str) -> Iterator[str]:
        """The keys of the object at the position; the caller consumes each key's value."""
        self.expect("{", what)
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            if self.peek() != '"':
                raise self._unexpected(self.peek(), "a key in quotes", what)
            key = self.value(f"a key of {what}")
            self.expect(":", what)
            yield key
            found = self.peek()
            self.pos += 1
            if found == "}":
                return
            if found != ",":
                self.pos -= 1
                raise self._unexpected(found, "',' or '}'", what)

    def array_values(self, what: str) -> Iterator[Any]:
        """Decode the elements of the array at the position one at a time: the import's hot loop."""
        self.expect("[", what)
        if self.peek() == "]":
            self.pos += 1
            return
        scan, separator = _scan, _SEPARATOR.match
        element = f"an element of {what}"
        while True:
            text, pos = self.text, self.pos
            if len(text) - pos < LOOKAHEAD_CHARS and not self.eof:
                self.read_more()
                continue
            try:
                result, end = scan(text, pos)
            except (StopIteration, ValueError, RecursionError):  # JSONDecodeError is a ValueError
                end = -1
            if end < 0 or (end == len(text) and not self.eof):
                result = self.value(element)  # the slow path: more text, a repair, or an error
            else:
                self.value_start, self.pos = pos, end
            yield result
            found = separator(self.text, self.pos)
            if found is not None:
                self.pos = found.end()
                if found[1] == "]":
                    return
                continue
            after = self.peek()  # the window ended inside the whitespace, or a broken file
            self.pos += 1
            if after == "]":
                return
            if after != ",":
                self.pos -= 1
                raise self._unexpected(after, "',' or ']'", what)

    def elements(self, what: str) -> Iterator[int]:
        """Indexes of the array at the position; the caller consumes each element."""
        self.expect("[", what)
        if self.peek() == "]":
            self.pos += 1
            return
        index = 0
        while True:
            yield index
            index += 1
            found = self.peek()
            self.pos += 1
            if found == "]":
                return
            if found != ",":
                self.pos -= 1
                raise self._unexpected(found, "',' or ']'", what)

    def skip(self, what: str, depth: int = 0) -> None:
        """Step over a value of any size without holding all of it in memory."""
        found = self.peek()
        if found not in ("{", "["):
            self.value(what)
        elif self.value(what, limit=SKIP_WINDOW_CHARS) is _TOO_LARGE:
            if depth >= MAX_DEPTH:
                raise self.error(
                    f"{what} nests arrays or objects inside each other more than {MAX_DEPTH} "
                    "levels deep: the file is damaged"
                )
            if found == "{":
                for key in self.members(what):
                    self.skip(f"`{key}` in {what}", depth + 1)
            else:
                for _ in self.elements(what):
                    self.skip(f"an element of {what}", depth + 1)

    def location(self, pos: int) -> str:
        newlines = self.text.count("\n", 0, pos)
        line = self._lines_before + newlines + 1
        if newlines:
            column = pos - self.text.rfind("\n", 0, pos)
        else:
            column = self._column_before + pos + 1
        return f"line {line}, column {column}"

    def error(self, problem: str, pos: int | None = None) -> ExportFormatError:
        where = self.location(self.pos if pos is None else pos)
        return ExportFormatError(f"{self.path}, {where}: {problem}")

    def _unexpected(self, found: str, expected: str, what: str) -> ExportFormatError:
        if found == "":
            return self.error(f"the file ends in the middle of {what} (truncated? export it again)")
        return self.error(f"expected {expected} in {what}, found {found!r}")


def _goes_on(error: StopIteration | json.JSONDecodeError) -> bool:
    """The scanner stopped because the value had not ended yet, not at a wrong character."""
    return isinstance(error, StopIteration) or error.msg.startswith("Unterminated")


def _problem(error: json.JSONDecodeError, text: str, what: str) -> str:
    """The scanner's complaint in words: its messages end in "at", for a position we add."""
    if error.msg.startswith("Invalid control character"):
        char = text[error.pos] if error.pos < len(text) else ""
        return (
            f"a raw control character (U+{ord(char or chr(0)):04X}) inside a text in {what}: "
            "JSON writes it as an escape such as \\u0000, so the file is damaged"
        )
    return f"{error.msg.removesuffix(' at')} in {what}"
