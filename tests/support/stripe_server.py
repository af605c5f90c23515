"""A Stripe-compatible API on loopback: the endpoints NeuroAPI uses, in Stripe's wire format.

The real `stripe` SDK is pointed at it (``tests/unit/test_stripe_api.py`` keeps it honest):
form-encoded v1 bodies with nested ``a[b][0][c]`` keys, ``Authorization: Bearer sk_...``,
``Idempotency-Key`` replay (same key and parameters: the saved response; other parameters:
``idempotency_error``), Stripe's object shapes, and its error shape
``{"error": {"type", "message", "code"?, "param"?}}``.

Meter events are deduplicated by ``identifier`` the way Stripe's v1 endpoint does: a repeat is
refused with 400 ``invalid_request_error`` "An event already exists with identifier X." and
no ``code`` (observed against Stripe test mode; the v2 endpoint names it
``duplicate_meter_event``). Checks Stripe runs asynchronously (customer mapping, value,
timestamp window) are not made here, as Stripe does not refuse the request for them.

Scripted failures (``fail_next``, ``down``) happen before the endpoint runs, so, like Stripe,
no idempotent result is saved for them and a retry with the same key is served afresh."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import string
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

SECRET_KEY = "sk_test_neuroapiFakeStripeKey0123456789"
METERED_PRICE = "price_neuroapi_metered_test"  # recurring, usage_type metered (a billing meter)
LICENSED_PRICE = "price_neuroapi_licensed_test"  # recurring, usage_type licensed (per seat)
API_VERSION = "2026-10-28.endive"

_ALNUM = string.ascii_letters + string.digits
_KEY_PART = re.compile(r"\[([^\]]*)\]")


def _id(prefix: str, length: int = 14) -> str:
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(length))


def decode_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's v1 encoding back into objects: ``line_items[0][price]=p`` is
    ``{"line_items": [{"price": "p"}]}``; ``expand[]=a`` appends to a list."""
    root: dict[str, Any] = {}
    for raw_key, value in pairs:
        head = raw_key.split("[", 1)[0]
        parts = [head, *_KEY_PART.findall(raw_key[len(head) :])]
        node: Any = root
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if part == "":  # "a[]": append
                if last:
                    node.append(value)
                else:
                    node.append({})
                    node = node[-1]
                continue
            nxt_is_append = not last and parts[index + 1] == ""
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, [] if nxt_is_append else {})
    return _lists(root)


def _lists(node: Any) -> Any:
    """Dicts keyed 0..n-1 were arrays on the caller's side."""
    if isinstance(node, dict):
        node = {k: _lists(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node) and sorted(map(int, node)) == list(range(len(node))):
            return [node[str(i)] for i in range(len(node))]
        return node
    if isinstance(node, list):
        return [_lists(v) for v in node]
    return node


def sign_webhook(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header value for this body, as Stripe signs webhook deliveries:
    ``t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def webhook_event(event_type: str, data_object: dict[str, Any], *, event_id: str | None = None,
                  created: int | None = None) -> dict[str, Any]:
    """A v1 (snapshot) event as Stripe delivers it to a webhook endpoint."""
    return {
        "id": event_id or _id("evt_", 24),
        "object": "event",
        "api_version": API_VERSION,
        "created": int(time.time()) if created is None else created,
        "data": {"object": data_object},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


@dataclass
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    form: dict[str, Any]  # decoded (nested) body
    fields: dict[str, str]  # the body's keys exactly as sent, e.g. "line_items[0][price]"
    headers: dict[str, str]  # lower-case names


class _ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.code, self.param = status, kind, message, code, param


def _missing(param: str) -> _ApiError:
    return _ApiError(400, "invalid_request_error", f"Missing required param: {param}.", "parameter_missing", param)


def _no_such(kind: str, object_id: str, param: str) -> _ApiError:
    return _ApiError(400, "invalid_request_error", f"No such {kind}: '{object_id}'", "resource_missing", param)


class FakeStripe:
    """``FakeStripe().start()``; point the SDK at ``.url`` with key ``SECRET_KEY``.

    Inspect ``.customers`` (id → customer), ``.meter_events`` (accepted, in order),
    ``.requests`` (every request received). Script failures with ``fail_next(n, status)``,
    ``down = True`` (connection refused until set back to False) and
    ``accept_then_fail_once()`` (the next meter event is recorded, but answered 500)."""

    def __init__(self, api_key: str = SECRET_KEY) -> None:
        self.api_key = api_key
        self.prices: dict[str, dict[str, Any]] = {
            METERED_PRICE: {"usage_type": "metered"},
            LICENSED_PRICE: {"usage_type": "licensed"},
        }
        self.customers: dict[str, dict[str, Any]] = {}
        self.checkout_sessions: dict[str, dict[str, Any]] = {}
        self.portal_sessions: dict[str, dict[str, Any]] = {}
        self.meter_events: list[dict[str, Any]] = []
        self.requests: list[Received] = []
        self._identifiers: set[str] = set()
        self._saved: dict[str, tuple[tuple, int, dict[str, Any]]] = {}  # idempotency key → result
        self._failures: deque[int] = deque()
        self._accept_then_fail = False
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._down = False
        self.port = 0

    # lifecycle

    def start(self) -> FakeStripe:
        self._listen()
        return self

    def stop(self) -> None:
        self._close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def down(self) -> bool:
        return self._down

    @down.setter
    def down(self, value: bool) -> None:
        """Down closes the listening socket (clients get connection refused); up reopens the
        same port."""
        if value and not self._down:
            self._close()
        elif not value and self._down:
            self._listen()
        self._down = bool(value)

    def _listen(self) -> None:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-stripe", daemon=True)
        self._thread.start()

    def _close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # scripting and inspection

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        """The next n requests get `status` in Stripe's error shape, before any endpoint runs."""
        with self._lock:
            self._failures.extend([status] * n)

    def accept_then_fail_once(self) -> None:
        """The next meter event that would be accepted is accepted and recorded (and its
        idempotent result saved, as Stripe would), but the answer is a 500: the answer was lost."""
        with self._lock:
            self._accept_then_fail = True

    def add_price(self, price_id: str, usage_type: str = "metered") -> None:
        with self._lock:
            self.prices[price_id] = {"usage_type": usage_type}

    def meter_total(self, customer_id: str | None = None, event_name: str | None = None) -> int:
        """Sum of accepted meter event values (what Stripe would bill)."""
        with self._lock:
            return sum(
                int(e["payload"].get("value", "0"))
                for e in self.meter_events
                if (customer_id is None or e["payload"].get("stripe_customer_id") == customer_id)
                and (event_name is None or e["event_name"] == event_name)
            )

    def requests_to(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # request handling (called from server threads)

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict, dict]:
        pairs = parse_qsl(body.decode(), keep_blank_values=True) if body else []
        if method == "GET" and "?" in path:
            path, query = path.split("?", 1)
            pairs = parse_qsl(query, keep_blank_values=True)
        form = decode_form(pairs)
        with self._lock:
            self.requests.append(Received(method, path, form, dict(pairs), headers))
            extra: dict[str, str] = {}
            try:
                if self._failures:
                    raise self._scripted(self._failures.popleft())
                self._authenticate(headers.get("authorization", ""))
                key = headers.get("idempotency-key") if method == "POST" else None
                fingerprint = (method, path, tuple(sorted(pairs)))
                if key is not None:
                    extra["Idempotency-Key"] = key
                    saved = self._saved.get(key)
                    if saved is not None:
                        if saved[0] != fingerprint:
                            raise _ApiError(
                                400, "idempotency_error",
                                "Keys for idempotent requests can only be used with the same parameters they were "
                                f"first used with. Try using a key other than '{key}' if you meant to execute a "
                                "different request.",
                            )
                        extra["Idempotent-Replayed"] = "true"
                        return saved[1], saved[2], extra
                status, obj = self._route(method, path, form)
                if key is not None:
                    self._saved[key] = (fingerprint, status, obj)
                if path == "/v1/billing/meter_events" and self._accept_then_fail:
                    self._accept_then_fail = False
                    raise self._scripted(500)
                return status, obj, extra
            except _ApiError as err:
                error: dict[str, Any] = {"message": err.message, "type": err.kind}
                if err.code:
                    error["code"] = err.code
                    error["doc_url"] = f"https://stripe.com/docs/error-codes/{err.code.replace('_', '-')}"
                if err.param:
                    error["param"] = err.param
                return err.status, {"error": error}, extra

    @staticmethod
    def _scripted(status: int) -> _ApiError:
        if status == 429:
            return _ApiError(429, "invalid_request_error",
                             "Request rate limit exceeded. Learn more about rate limits here "
                             "https://stripe.com/docs/rate-limits.", "rate_limit")
        if status == 409:
            return _ApiError(409, "invalid_request_error", "This object cannot be accessed right now because "
                             "another API request or Stripe process is currently accessing it.", "lock_timeout")
        if status >= 500:
            return _ApiError(status, "api_error", "An unknown error occurred")
        return _ApiError(status, "invalid_request_error", "The request could not be processed.")

    def _authenticate(self, authorization: str) -> None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _ApiError(401, "invalid_request_error",
                            "You did not provide an API key. You need to provide your API key in the Authorization "
                            "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').")
        if not hmac.compare_digest(token.encode(), self.api_key.encode()):
            masked = token[:8] + "*" * max(0, len(token) - 12) + token[-4:] if len(token) > 12 else "****"
            raise _ApiError(401, "invalid_request_error", f"Invalid API Key provided: {masked}", "api_key_invalid")

    def _route(self, method: str, path: str, form: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if method == "POST" and path == "/v1/customers":
            return 200, self._create_customer(form)
        if method == "GET" and path.startswith("/v1/customers/"):
            customer_id = path.rsplit("/", 1)[1]
            if customer_id not in self.customers:
                raise _ApiError(404, "invalid_request_error", f"No such customer: '{customer_id}'",
                                "resource_missing", "id")
            return 200, self.customers[customer_id]
        if method == "POST" and path == "/v1/checkout/sessions":
            return 200, self._create_checkout_session(form)
        if method == "POST" and path == "/v1/billing_portal/sessions":
            return 200, self._create_portal_session(form)
        if method == "POST" and path == "/v1/billing/meter_events":
            return 200, self._create_meter_event(form)
        raise _ApiError(404, "invalid_request_error",
                        f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or we can "
                        "help at https://support.stripe.com/.")

    def _create_customer(self, form: dict[str, Any]) -> dict[str, Any]:
        customer_id = _id("cus_")
        customer = {
            "id": customer_id,
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": int(time.time()),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": form.get("description"),
            "email": form.get("email"),
            "invoice_prefix": customer_id[4:12].upper(),
            "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None,
                                 "rendering_options": None},
            "livemode": False,
            "metadata": dict(form.get("metadata") or {}),
            "name": form.get("name"),
            "next_invoice_sequence": 1,
            "phone": form.get("phone"),
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        self.customers[customer_id] = customer
        return customer

    def _customer_param(self, form: dict[str, Any], required: bool) -> str | None:
        customer_id = form.get("customer")
        if customer_id is None:
            if required:
                raise _missing("customer")
            return None
        if customer_id not in self.customers:
            raise _no_such("customer", customer_id, "customer")
        return customer_id

    def _create_checkout_session(self, form: dict[str, Any]) -> dict[str, Any]:
        mode = form.get("mode")
        if mode is None:
            raise _missing("mode")
        if mode not in ("payment", "setup", "subscription"):
            raise _ApiError(400, "invalid_request_error",
                            f"Invalid mode: must be one of payment, setup, or subscription (got {mode!r})",
                            "parameter_invalid_string", "mode")
        customer_id = self._customer_param(form, required=False)
        items = form.get("line_items") or []
        if mode != "setup" and not items:
            raise _missing("line_items")
        for index, item in enumerate(items):
            price_id = item.get("price")
            if price_id is None:
                raise _missing(f"line_items[{index}][price]")
            price = self.prices.get(price_id)
            if price is None:
                raise _no_such("price", price_id, f"line_items[{index}][price]")
            if price["usage_type"] == "metered" and "quantity" in item:
                raise _ApiError(400, "invalid_request_error",
                                f"Quantity should not be specified where usage_type is `metered`. Remove quantity "
                                f"from `line_items[{index}]`.", "parameter_unknown", f"line_items[{index}][quantity]")
            if price["usage_type"] == "licensed" and "quantity" not in item:
                raise _missing(f"line_items[{index}][quantity]")
        session_id = _id("cs_test_", 58)
        now = int(time.time())
        session = {
            "id": session_id,
            "object": "checkout.session",
            "cancel_url": form.get("cancel_url"),
            "client_reference_id": form.get("client_reference_id"),
            "created": now,
            "currency": None,
            "customer": customer_id,
            "customer_email": form.get("customer_email"),
            "expires_at": now + 24 * 3600,
            "livemode": False,
            "metadata": dict(form.get("metadata") or {}),
            "mode": mode,
            "payment_status": "unpaid",
            "status": "open",
            "subscription": None,
            "success_url": form.get("success_url"),
            "ui_mode": "hosted",
            "url": f"https://checkout.stripe.com/c/pay/{session_id}",
        }
        self.checkout_sessions[session_id] = session
        return session

    def _create_portal_session(self, form: dict[str, Any]) -> dict[str, Any]:
        customer_id = self._customer_param(form, required=True)
        session_id = _id("bps_", 24)
        session = {
            "id": session_id,
            "object": "billing_portal.session",
            "configuration": "bpc_" + session_id[4:18],
            "created": int(time.time()),
            "customer": customer_id,
            "flow": None,
            "livemode": False,
            "locale": None,
            "on_behalf_of": None,
            "return_url": form.get("return_url"),
            "url": f"https://billing.stripe.com/p/session/test_{session_id[4:]}",
        }
        self.portal_sessions[session_id] = session
        return session

    def _create_meter_event(self, form: dict[str, Any]) -> dict[str, Any]:
        if not form.get("event_name"):
            raise _missing("event_name")
        payload = form.get("payload")
        if not isinstance(payload, dict) or not payload:
            raise _missing("payload")
        identifier = form.get("identifier") or _id("", 32)
        if identifier in self._identifiers:
            raise _ApiError(400, "invalid_request_error", f"An event already exists with identifier {identifier}.")
        now = int(time.time())
        event = {
            "object": "billing.meter_event",
            "created": now,
            "event_name": form["event_name"],
            "identifier": identifier,
            "livemode": False,
            "payload": dict(payload),
            "timestamp": int(form["timestamp"]) if form.get("timestamp") else now,
        }
        self._identifiers.add(identifier)
        self.meter_events.append(event)
        return event


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeStripe  # set per server
    # HTTP/1.0: one request per connection, so "down" really refuses the next request.

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, obj, extra = self.server_fake.handle(self.command, self.path, headers, body)
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", _id("req_"))
        self.send_header("Stripe-Version", headers.get("stripe-version", API_VERSION))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass
