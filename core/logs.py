"""Logging for every NeuroAPI process: secrets and prompts scrubbed, our lines in the replica's log.

``install()`` is the one entry point (ingress, actors, CLI). It wraps the log-record factory, so
every record (ours, Ray's, Serve's, third-party ones) is scrubbed when it is made, before any
handler formats, writes or ships it to error tracking. It also replaces ``sys.excepthook``,
``threading.excepthook`` and ``sys.unraisablehook`` with scrubbing versions, and inside a Serve
replica (``in_replica=True``) it wraps ``sys.stdout`` / ``sys.stderr`` (print output and the
tracebacks Ray writes into the worker's .out/.err files) in a scrubbing stream and sends the
``neuroapi`` loggers to Serve's replica log file. Not in the CLI: ``keys create`` prints the new
key on stdout on purpose.

What ``scrub`` removes (replaced by ``[REDACTED]``):

* API keys ``neuro_<prefix>_<secret>``: only the public prefix ``neuro_xxxxxxxx`` stays. Anything
  else that starts ``neuro_`` and is not a bare prefix is treated as a mangled key and dropped whole.
* Session tokens ``nsess_<b64url>.<b64url>``, provider keys ``sk-...``, Stripe secrets
  (``sk_live_...``, ``sk_test_...``, ``rk_...``, ``whsec_...``) and Fernet tokens
  (``gAAAAA...``, a key's ciphertext at rest): dropped whole. A password in a URL
  (``redis://user:pw@host``) too.
* Bearer / Basic credentials in free text: the scheme word stays.
* Credential fields, in any of the shapes they reach a log in: a header line (``Cookie: ...``), a
  dict or JSON member (``'x-api-key': '...'``, ``"password": "..."``), an ASGI header pair
  (``(b'authorization', b'...')``), a keyword or query parameter (``api_key=...``). Fields:
  Authorization, Proxy-Authorization, X-Api-Key, Api-Key, Cookie, Set-Cookie, password, secret,
  client_secret, token, access_token, refresh_token, session_token. The whole value goes (a
  neuro key prefix in it stays); an unquoted value runs to the end of the line (or ``&`` ``,``).
* Message content, as a body field: the value of ``messages``, ``content``, ``reasoning_content``,
  ``prompt``, ``input``, ``input_value`` (pydantic), ``instructions``, ``system``, ``text``,
  ``arguments`` and ``body``, when it is a quoted string or a bracketed structure (JSON, a Python
  repr, an escaped JSON string inside JSON, pretty-printed JSON; a value cut short goes to the end
  of its line, so the rest of a traceback stays readable). Scalars such as
  ``"input": 12`` stay. The rule is blunt on purpose: a code line in a traceback that mentions
  such a field may come out partly redacted.
* ``bytes`` arguments of a log call are shown as their length (HTTP bodies arrive as bytes).

Plain text with no such marker (an answer echoed into an exception message, say) cannot be
recognised, so our own code never logs bodies or exception text: types, ids and prefixes only.
``extra=`` attributes are set after the record factory runs and are not scrubbed: pass ids only.

Tracebacks: a record's ``exc_info`` is formatted and scrubbed into ``exc_text`` when the record is
made, and replaced by a ``ScrubbedTraceback`` that carries only that text, so no handler or error
tracker can format the original exception or read its frames' locals (where prompts and keys
live). ``stack_info`` is scrubbed too."""

from __future__ import annotations

import logging
import re
import sys
import threading
import traceback
from typing import Any, TextIO

from core.key_format import KEY_PREFIX_TAG, PREFIX_PATTERN, SESSION_TOKEN_TAG

REDACTED = "[REDACTED]"

_SECRET_FIELDS = (
    "proxy-authorization", "authorization", "x-api-key", "api-key", "api_key", "apikey",
    "set-cookie", "cookie", "client_secret", "secret", "password", "access_token",
    "refresh_token", "session_token", "token",
)
_BODY_FIELDS = (
    "messages", "reasoning_content", "content", "prompt", "input_value", "input", "instructions",
    "system", "text", "arguments", "body",
)
_SECRET_FIELD_NAMES = frozenset(_SECRET_FIELDS)

# A field name, quoted (possibly at an escaped level, \"name\") or bare, then its separator:
# quoted names take ':' (JSON, dict repr) or ',' (an ASGI header pair); bare ones ':' or '='.
_FIELD = re.compile(
    r"(?P<quote>\\*['\"])?(?<![A-Za-z0-9])(?P<name>"
    + "|".join(re.escape(name) for name in _SECRET_FIELDS + _BODY_FIELDS)
    + r")(?(quote)(?P=quote)\s*(?P<separator>[:,])|\s*[:=])\s*",
    re.IGNORECASE,
)
_BARE_VALUE_END = re.compile(r"[\r\n'\"&,]")
_BACKSLASHES = re.compile(r"\\*")
_STRUCTURE_MARK = re.compile(r"[\n'\"\[\]{}()]")
_KEY_PREFIX = re.compile(PREFIX_PATTERN.pattern + r"(?=_|$)")
_SCHEME = re.compile(r"(?i)(?:bearer|basic|token|digest)\s+")

_NEURO_TOKEN = re.compile(KEY_PREFIX_TAG + r"[A-Za-z0-9_\-]+")
_SESSION_TOKEN = re.compile(SESSION_TOKEN_TAG + r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*")
_PROVIDER_KEY = re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{8,}")
# Stripe's secret and restricted keys, and webhook signing secrets (billing).
_STRIPE_SECRET = re.compile(r"(?<![A-Za-z0-9])(?:(?:sk|rk)_(?:test|live)|whsec)_[A-Za-z0-9]{8,}")
_FERNET_TOKEN = re.compile(r"gAAAAA[A-Za-z0-9_\-]{20,}={0,2}")
_URL_PASSWORD = re.compile(r"(://[^/\s:@]*):[^/\s@]+@")
# Possessive, and not followed by '[': a token already cut down to "neuro_xxxxxxxx_" stays.
_BEARER = re.compile(rf"(?i)\b((?:bearer|basic)\s+)(?!{KEY_PREFIX_TAG}|{SESSION_TOKEN_TAG}|sk-)[A-Za-z0-9._~+/=\-]{{8,}}+(?!\[)")


def _without_key_secret(token: str) -> str:
    prefix = _KEY_PREFIX.match(token)
    if prefix is None:
        return KEY_PREFIX_TAG + REDACTED
    if len(token) <= prefix.end() + 1:  # a bare prefix, or one already redacted
        return token
    return f"{prefix.group(0)}_{REDACTED}"


def _redacted_credential(value: str) -> str:
    """A credential field's value: the auth scheme and a neuro key prefix are all that stay."""
    scheme = _SCHEME.match(value)
    prefix = re.search(PREFIX_PATTERN.pattern + r"(?![a-z0-9])", value)
    kept = f"{prefix.group(0)}_{REDACTED}" if prefix else REDACTED
    return (scheme.group(0) if scheme else "") + kept


def _is_delimiter(text: str, index: int, level: int) -> bool:
    """Whether the quote at ``index`` delimits a string at escape ``level`` (0: plain JSON or
    repr; 1: JSON inside a JSON string, \\"...\\"; and so on): at level n a delimiting quote
    follows n backslashes, plus any whole number of escaped backslashes (2(n+1) each)."""
    backslashes = 0
    while index - backslashes - 1 >= 0 and text[index - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes >= level and (backslashes - level) % (2 * (level + 1)) == 0


def _string_end(text: str, start: int, quote: str, level: int) -> tuple[int, bool]:
    """(index of the closing quote, True) for a string whose content starts at ``start``; or
    (the end of the line, False) when the line ends first: JSON and repr strings never hold a
    raw line break, so the text was cut there."""
    while True:
        index = text.find(quote, start)
        newline = text.find("\n", start, len(text) if index == -1 else index)
        if newline != -1:
            return newline, False
        if index == -1:
            return len(text), False
        if _is_delimiter(text, index, level):
            return index, True
        start = index + 1


def _continues_on_next_line(text: str, start: int, newline: int) -> bool:
    """Pretty-printed JSON breaks lines only after an opener, a comma or a colon; any other
    line break inside a value means the text was cut (the rest of a traceback follows)."""
    index = newline - 1
    while index >= start and text[index] in " \t\r":
        index -= 1
    return index >= start and text[index] in "[{(,:"


def _structure_end(text: str, start: int, level: int) -> int:
    """Index just past the bracket that closes the one at ``start``, or where the text was cut."""
    depth = 0
    position = start
    while (found := _STRUCTURE_MARK.search(text, position)) is not None:
        index, char = found.start(), found.group(0)
        position = index + 1
        if char == "\n":
            if not _continues_on_next_line(text, start, index):
                return index
        elif char in "'\"":
            if _is_delimiter(text, index, level):
                closing, closed = _string_end(text, index + 1, char, level)
                if not closed:
                    return closing
                position = closing + 1
        elif char in "[{(":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return index + 1
    return len(text.rstrip("\r\n"))  # ran off the end: keep the line break


def _redact_fields(text: str) -> str:
    pieces: list[str] = []
    position = 0
    while (field := _FIELD.search(text, position)) is not None:
        secret = field.group("name").lower() in _SECRET_FIELD_NAMES
        if field.group("separator") == "," and not secret:
            # ("content", ...) is a code line in a traceback, not a header pair: leave it.
            pieces.append(text[position:field.end()])
            position = field.end()
            continue
        level = max(len(field.group("quote") or "") - 1, 0)
        start = field.end()
        if text.startswith(("b'", 'b"'), start):  # a bytes repr
            start += 1
        backslashes = _BACKSLASHES.match(text, start).end() - start
        opener = text[start + backslashes: start + backslashes + 1]
        pieces.append(text[position:start])
        if opener in ("'", '"'):
            content_start = start + backslashes + 1
            closing, closed = _string_end(text, content_start, opener, backslashes)
            content_end = closing - backslashes if closed else closing
            content = text[content_start:content_end]
            pieces.append(text[start:content_start])
            pieces.append(_redacted_credential(content) if secret else REDACTED)
            position = content_end
        elif opener and opener in "[{(":
            pieces.append(REDACTED)
            position = _structure_end(text, start, level)
        elif secret:
            end = _BARE_VALUE_END.search(text, start)
            end_index = len(text) if end is None else end.start()
            value = text[start:end_index]
            pieces.append(_redacted_credential(value) if value.strip() else value)
            position = end_index
        else:  # a number, null or a name: not message content
            position = start
    pieces.append(text[position:])
    return "".join(pieces)


def scrub(text: str) -> str:
    """``text`` with every secret and every piece of message content replaced (rules above)."""
    if not isinstance(text, str):
        text = str(text)
    text = _redact_fields(text)
    text = _NEURO_TOKEN.sub(lambda m: _without_key_secret(m.group(0)), text)
    text = _SESSION_TOKEN.sub(SESSION_TOKEN_TAG + REDACTED, text)
    text = _PROVIDER_KEY.sub("sk-" + REDACTED, text)
    text = _STRIPE_SECRET.sub(REDACTED, text)
    text = _FERNET_TOKEN.sub(REDACTED, text)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}:{REDACTED}@", text)
    return _BEARER.sub(lambda m: m.group(1) + REDACTED, text)


# -- log records ---------------------------------------------------------------------------

class ScrubbedTraceback(Exception):
    """Stands in for a logged exception: only its scrubbed, formatted text goes on."""


def _opaque_bytes(argument: Any) -> Any:
    if isinstance(argument, bytes | bytearray | memoryview):
        return f"<{len(argument)} bytes>"
    return argument


def _scrub_record(record: logging.LogRecord) -> None:
    if isinstance(record.args, tuple):
        record.args = tuple(_opaque_bytes(argument) for argument in record.args)
    try:
        message = record.getMessage()
    except Exception:  # logging would print msg and args raw to stderr; say it, scrubbed
        message = f"{record.msg} [log arguments did not fit the format: {record.args!r}]"
    record.msg, record.args = scrub(message), None
    if record.exc_info:
        # format_exception, not Formatter.formatException: that one prints through builtins.print,
        # which Serve replaces in replicas with a function that writes tuple reprs to a StringIO.
        text = record.exc_text or "".join(traceback.format_exception(*record.exc_info)).removesuffix("\n")
        record.exc_text = scrub(text)
        record.exc_info = (ScrubbedTraceback, ScrubbedTraceback(record.exc_text), None)
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)


# -- uncaught exceptions -------------------------------------------------------------------

def _write_scrubbed(text: str) -> None:
    stream = sys.stderr
    if stream is not None:
        stream.write(scrub(text))
        stream.flush()


def _scrubbing_excepthook(exc_type, exc_value, exc_traceback) -> None:
    # Not chained to the previous hook: that would hand it the raw exception (Ray's pushes the
    # driver's traceback to the GCS; an error tracker's would ship it unscrubbed).
    _write_scrubbed("".join(traceback.format_exception(exc_type, exc_value, exc_traceback)))


def _scrubbing_threading_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:  # as the default hook: a thread may exit this way silently
        return
    name = args.thread.name if args.thread is not None else threading.get_ident()
    _write_scrubbed(f"Exception in thread {name}:\n"
                    + "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))


def _scrubbing_unraisablehook(unraisable: Any) -> None:
    try:
        culprit = repr(unraisable.object)
    except Exception:
        culprit = f"<{type(unraisable.object).__name__} object>"
    where = f"{unraisable.err_msg or 'Exception ignored in'}: {culprit}\n"
    _write_scrubbed(where + "".join(traceback.format_exception(
        unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)))


for _hook in (_scrubbing_excepthook, _scrubbing_threading_excepthook, _scrubbing_unraisablehook):
    _hook.neuroapi_scrubbing = True  # type: ignore[attr-defined]  # how install() knows its own


# -- standard streams in a replica ---------------------------------------------------------

class ScrubbingStream:
    """A text stream that scrubs whole lines before they reach ``inner``.

    Lines are held until their newline (or ``flush``): ``print(a, b)`` writes a, the separator
    and b separately, and a header name and its value may arrive in different writes. Lines that
    end the way pretty-printed JSON continues (an opener, a comma, a colon) are held for the
    next one too, up to ``HOLD_LIMIT`` characters, so a body dumped piece by piece is scrubbed
    as a whole."""

    HOLD_LIMIT = 64 * 1024

    def __init__(self, inner: TextIO):
        self.inner = inner
        self._pending = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            complete, newline, rest = self._pending.rpartition("\n")
            if not newline or (len(self._pending) < self.HOLD_LIMIT
                               and _continues_on_next_line(complete, 0, len(complete))):
                return len(text)
            self._pending = rest
            self.inner.write(scrub(complete + newline))
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self.inner.write(scrub(self._pending))
                self._pending = ""
        self.inner.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, encoding, isatty, ...
        return getattr(self.inner, name)


def _wrap_standard_streams() -> None:
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, ScrubbingStream):
            setattr(sys, name, ScrubbingStream(stream))


# -- the entry point -----------------------------------------------------------------------

def install(in_replica: bool = False) -> None:
    """Idempotent: the record factory is wrapped once per process; the hooks are (re)set when
    something else replaced them. The factory comes first: in a replica, print output and the
    wrapped streams end up as log records."""
    current = logging.getLogRecordFactory()
    if not getattr(current, "neuroapi_scrubbing", False):
        def factory(*args, **kwargs) -> logging.LogRecord:
            record = current(*args, **kwargs)
            _scrub_record(record)
            return record

        factory.neuroapi_scrubbing = True  # type: ignore[attr-defined]
        logging.setLogRecordFactory(factory)
    if not getattr(sys.excepthook, "neuroapi_scrubbing", False):
        sys.excepthook = _scrubbing_excepthook
    if not getattr(threading.excepthook, "neuroapi_scrubbing", False):
        threading.excepthook = _scrubbing_threading_excepthook
    if not getattr(sys.unraisablehook, "neuroapi_scrubbing", False):
        sys.unraisablehook = _scrubbing_unraisablehook
    if in_replica:
        ours, serves = logging.getLogger("neuroapi"), logging.getLogger("ray.serve")
        ours.handlers, ours.propagate = list(serves.handlers), False
        ours.setLevel(logging.INFO)
        _wrap_standard_streams()
