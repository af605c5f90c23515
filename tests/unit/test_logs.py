import builtins
import io
import json
import logging
import sys
import threading
import types

import pytest

from core import logs
from core.key_format import generate_key

PLAINTEXT, PARSED = generate_key()
SESSION_TOKEN = "nsess_Zm9vYmFyLWJhei1xdXV4LTEyMzQ1Njc4.c2lnbmF0dXJlXzk4NzY1NDMyMQ"
CANARY = "CANARY-5f3c9a"

# (how the secret reaches a log, what must not survive); PLAINTEXT's secret and the session
# token's body are checked in every case as well.
SECRET_SHAPES = [
    (f"key {PLAINTEXT} used", PARSED.secret),
    (f"Authorization: Bearer {PLAINTEXT}", PARSED.secret),
    ("Authorization: Bearer opaque-token-0123456789", "opaque-token"),
    (f"{{'authorization': 'Bearer {PLAINTEXT}', 'x-api-key': 'sk-ant-api03-abcdefghijkl'}}", "abcdefghijkl"),
    ("{'proxy-authorization': 'Basic dXNlcjpwYXNzd29yZA=='}", "dXNlcjpwYXNzd29yZA"),
    (f"[(b'host', b'gw'), (b'authorization', b'Bearer {PLAINTEXT}'), (b'x-api-key', b'{PLAINTEXT}')]",
     PARSED.secret),
    (f"headers: {{'cookie': 'theme=dark; nsess={SESSION_TOKEN}; __cf=cfsecret42'}}", "cfsecret42"),
    (f"Set-Cookie: nsess={SESSION_TOKEN}; Path=/; HttpOnly", SESSION_TOKEN),
    (f"session {SESSION_TOKEN} expired", SESSION_TOKEN),
    ("upstream said: Incorrect API key provided: sk-proj-abcdefghijklmnop", "abcdefghijklmnop"),
    ("stripe: Invalid API Key provided: sk_test_51Hxyzabcdefghijklmn", "51Hxyzabcdefghijklmn"),
    ("billing with rk_live_51Habcdefghijklmnopq and whsec_abcdefghijklmnopqrst", "abcdefghijklmnopq"),
    ("billing with rk_live_51Habcdefghijklmnopq and whsec_abcdefghijklmnopqrst", "abcdefghijklmnopqrst"),
    ("SealedKey(digest='ab12', ciphertext='gAAAAABnQ0Zx8mP2kLwq9T7rV_yX3-c1JdEeFfGgHhIiJjKkLl==')", "8mP2kLwq9"),
    ("Error connecting to redis://default:s3cr3t-pw@10.0.0.7:6379/0", "s3cr3t-pw"),
    (f"GET /v1/models?api_key={PLAINTEXT}&page=2", PARSED.secret),
    ('{"email": "a@b.c", "password": "hunter2-xyz"}', "hunter2"),
    (json.dumps({"model": "m", "messages": [{"role": "user", "content": f"say {CANARY} \"now\" ]"}]}), CANARY),
    (json.dumps({"prompt": CANARY, "input": [CANARY], "system": CANARY}), CANARY),
    (repr({"model": "m", "messages": [{"role": "user", "content": f"it's {CANARY}"}]}), CANARY),
    (json.dumps({"log": json.dumps({"messages": [{"content": f"{CANARY} \"quoted\""}]})}), CANARY),
    ('{"model": "m", "messages": [{"role": "user", "content": "' + CANARY + " and then the log line was cut", CANARY),
    ("data: " + json.dumps({"choices": [{"delta": {"content": CANARY}}]}), CANARY),
    (f"1 validation error: input_value={{'content': '{CANARY}'}}, input_type=dict", CANARY),
    (f"ChatMessage(role='user', content='{CANARY}', name=None)", CANARY),
    (json.dumps({"input": ["first", CANARY], "messages": [{"role": "user", "content": CANARY}]}, indent=2), CANARY),
]


def assert_clean(text: str, secret: str | None = None) -> None:
    assert secret is None or secret not in text
    assert PARSED.secret not in text
    assert SESSION_TOKEN.removeprefix("nsess_") not in text


@pytest.fixture
def logger(caplog):
    logs.install()
    caplog.set_level(logging.INFO)
    return logging.getLogger("neuroapi.test")


@pytest.fixture
def fresh_hooks(monkeypatch):
    """Let install() set the process hooks for this test only."""
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
    logs.install()


@pytest.mark.parametrize(("text", "secret"), SECRET_SHAPES)
def test_scrub_removes_each_kind_of_secret_and_content(text, secret):
    scrubbed = logs.scrub(text)
    assert_clean(scrubbed, secret)
    assert logs.scrub(scrubbed) == scrubbed  # a scrubbed line passes again unchanged


def test_a_full_key_keeps_its_public_prefix_everywhere():
    for text in (f"key {PLAINTEXT}", f"Authorization: Bearer {PLAINTEXT}",
                 f"[(b'authorization', b'Bearer {PLAINTEXT}')]", f"?api_key={PLAINTEXT}&x=1"):
        assert f"{PARSED.prefix}_[REDACTED]" in logs.scrub(text)


def test_malformed_keys_go_whole_and_a_bare_prefix_stays():
    assert logs.scrub(f"neuro_{CANARY}x") == "neuro_[REDACTED]"
    assert logs.scrub(PARSED.prefix + "zz_abc") == "neuro_[REDACTED]"  # not a real prefix: all of it
    assert logs.scrub(f"revoked {PARSED.prefix}") == f"revoked {PARSED.prefix}"


@pytest.mark.parametrize("text", [
    "upstream openai/gpt-4o-mini failed (upstream_error); trying the next candidate",
    "request 6f1d2c3e-0b7a-4c55-9e1f-2a3b4c5d6e7f failed: AttributeError",
    "POST /v1/chat/completions 200 12.3ms",
    "prompt_tokens=12 completion_tokens=3 total_tokens=15",
    '{"usage": {"prompt_tokens": 12, "input_tokens": 4}, "input": 7, "model": "gpt-4o-mini"}',
    "disk-usage-abcdefghijkl at 80%; task-0123456789 done",
    "Replica Provider-openai#abc started on 10.0.0.5:8000",
    "content-type: application/json; content-length: 42",
    "connecting to redis://127.0.0.1:6379/0 and http://[::1]:8000/v1",
    "the bearer of bad news",
])
def test_ordinary_text_is_untouched(text):
    assert logs.scrub(text) == text


@pytest.mark.parametrize(("text", "secret"), SECRET_SHAPES)
def test_messages_and_their_arguments_are_scrubbed(logger, caplog, text, secret):
    logger.info(text)
    logger.info("a line with %s in its arguments", text)
    logger.info("%(what)s as a mapping", {"what": text})
    assert caplog.records and all(record.args is None for record in caplog.records)
    for record in caplog.records:
        assert_clean(record.getMessage(), secret)
    assert_clean(caplog.text, secret)


def test_message_content_and_bodies_never_reach_a_log_line(logger, caplog):
    body = json.dumps({"messages": [{"role": "user", "content": CANARY}]}).encode()
    logger.info("received %s then %r", body, bytearray(body))
    logger.info({"messages": [{"content": CANARY}]})  # a non-string message
    assert CANARY not in caplog.text
    assert f"received <{len(body)} bytes> then '<{len(body)} bytes>'" in caplog.text


def test_arguments_that_do_not_fit_the_format_are_scrubbed_not_raised(logger, caplog):
    logger.info("two places %s %s, one argument", PLAINTEXT)
    assert_clean(caplog.text)
    assert PARSED.prefix in caplog.text and "did not fit" in caplog.text


@pytest.mark.parametrize(("text", "secret"), SECRET_SHAPES)
def test_tracebacks_are_scrubbed_when_the_record_is_made(logger, caplog, text, secret):
    try:
        try:
            raise KeyError(text)
        except KeyError as cause:
            raise RuntimeError(f"wrapping {text}") from cause
    except RuntimeError:
        logger.exception("request failed")
    record = caplog.records[-1]
    assert "Traceback (most recent call last)" in record.exc_text
    if "\n" not in text:  # a value cut short is scrubbed to the end of its line, not beyond
        assert record.exc_text.splitlines()[-1].startswith("RuntimeError: wrapping")
    assert_clean(record.exc_text, secret)
    assert_clean(caplog.text, secret)
    # The original exception (and its frames' locals) never reaches a handler; a formatter
    # that ignores exc_text and formats exc_info itself still sees only scrubbed text.
    assert record.exc_info[0] is logs.ScrubbedTraceback and record.exc_info[2] is None
    assert_clean(logging.Formatter().formatException(record.exc_info), secret)


def test_tracebacks_are_formatted_without_print(logger, caplog, monkeypatch):
    # Serve replaces print in a replica with one that writes tuple reprs to any other file;
    # Formatter.formatException prints the traceback into a StringIO.
    monkeypatch.setattr(builtins, "print", lambda *objects, **kwargs: kwargs["file"].write(repr(objects)))
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    assert caplog.records[-1].exc_text.startswith("Traceback (most recent call last):\n")
    assert caplog.records[-1].exc_text.endswith("ValueError: boom")


def test_stack_info_is_scrubbed(logger, caplog):
    factory = logging.getLogRecordFactory()
    stack = f'Stack (most recent call last):\n  File "app.py", line 3, in <module>\n    call("{PLAINTEXT}")'
    record = factory("neuroapi.test", logging.INFO, "app.py", 3, "here", None, None, None, stack)
    assert_clean(record.stack_info)
    assert PARSED.prefix in record.stack_info
    logger.info("a real stack", stack_info=True)
    assert "Stack (most recent call last)" in caplog.records[-1].stack_info


def _raise(text: str) -> BaseException:
    try:
        raise ValueError(text)
    except ValueError as error:
        return error


@pytest.mark.parametrize(("text", "secret"), SECRET_SHAPES)
def test_uncaught_exceptions_are_scrubbed(fresh_hooks, capsys, text, secret):
    error = _raise(text)
    sys.excepthook(type(error), error, error.__traceback__)
    printed = capsys.readouterr().err
    assert "ValueError" in printed and "Traceback" in printed
    assert_clean(printed, secret)


def test_uncaught_exceptions_in_threads_are_scrubbed(fresh_hooks, capsys):
    def fail() -> None:
        raise ValueError(f"lost {PLAINTEXT} {SESSION_TOKEN} {json.dumps({'content': CANARY})}")

    thread = threading.Thread(target=fail, name="worker-7")
    thread.start()
    thread.join()
    printed = capsys.readouterr().err
    assert "Exception in thread worker-7" in printed and "ValueError: lost" in printed
    assert_clean(printed, CANARY)
    assert PARSED.prefix in printed


def test_unraisable_exceptions_are_scrubbed(fresh_hooks, capsys):
    error = _raise(f"in __del__ with {PLAINTEXT}")
    sys.unraisablehook(types.SimpleNamespace(
        exc_type=ValueError, exc_value=error, exc_traceback=error.__traceback__,
        err_msg=None, object=f"<holder of {SESSION_TOKEN}>"))
    printed = capsys.readouterr().err
    assert printed.startswith("Exception ignored in: ") and "ValueError" in printed
    assert_clean(printed)


def test_install_keeps_hooks_it_set_and_replaces_others(fresh_hooks):
    ours = sys.excepthook
    logs.install()
    assert sys.excepthook is ours and getattr(ours, "neuroapi_scrubbing", False)
    assert getattr(threading.excepthook, "neuroapi_scrubbing", False)
    assert getattr(sys.unraisablehook, "neuroapi_scrubbing", False)


@pytest.mark.parametrize(("text", "secret"), SECRET_SHAPES)
def test_the_scrubbing_stream_scrubs_lines_split_across_writes(text, secret):
    inner = io.StringIO()
    stream = logs.ScrubbingStream(inner)
    line = f"print: {text}\n"
    for start in range(0, len(line), 7):  # a secret never arrives in one piece
        stream.write(line[start:start + 7])
    stream.write(f"unfinished {PLAINTEXT}")
    assert "unfinished" not in inner.getvalue()  # held until its newline or a flush
    stream.flush()
    assert inner.getvalue().startswith("print: ")
    assert_clean(inner.getvalue(), secret)
    assert f"unfinished {PARSED.prefix}_[REDACTED]" in inner.getvalue()


def test_a_replica_wraps_stdout_and_stderr_once(monkeypatch):
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    ours = logging.getLogger("neuroapi")
    for name in ("handlers", "propagate", "level"):  # restored after the test
        monkeypatch.setattr(ours, name, getattr(ours, name))
    logs.install(in_replica=True)
    logs.install(in_replica=True)
    assert isinstance(sys.stdout, logs.ScrubbingStream) and sys.stdout.inner is out
    assert isinstance(sys.stderr, logs.ScrubbingStream) and sys.stderr.inner is err
    print("printed", PLAINTEXT, SESSION_TOKEN)
    print("traceback", SECRET_SHAPES[3][0], file=sys.stderr)
    sys.stdout.flush()
    assert out.getvalue() == f"printed {PARSED.prefix}_[REDACTED] nsess_[REDACTED]\n"
    assert err.getvalue().startswith("traceback {'authorization': ")
    assert_clean(err.getvalue(), "abcdefghijkl")


def test_the_existing_factory_is_kept_and_wrapped_once():
    logs.install()
    factory = logging.getLogRecordFactory()
    logs.install()
    assert logging.getLogRecordFactory() is factory
    assert getattr(factory, "neuroapi_scrubbing", False)
