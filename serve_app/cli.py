"""The ``neuroapi`` command: run the gateway, manage accounts and keys, rotate key material."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from redis.asyncio import Redis

from actors.accounts.deletion import delete_account
from actors.accounts.export import export_account
from actors.accounts.sealing import AccountSealer
from actors.accounts.store import AccountError, AccountStore, normalise_email
from actors.billing.service import BillingService, SealedBillingIds
from actors.billing.stripe_api import StripeBilling
from actors.housekeeping import housekeeping_pass
from actors.keys.crypto import KeyCrypto
from actors.keys.limit_settings import LimitSettings
from actors.keys.rotation import rotate
from actors.keys.store import KeyStore
from actors.metering.usage_report import usage_document
from actors.metering.usage_store import UsageStore
from actors.routing.scope_service import ScopeService
from config.secrets import load_key_material
from config.settings import STRIPE_SECRET_VARIABLE, ConfigError, Settings, load_settings
from core import logs
from core.invalidation import InvalidationTimeout
from core.limits import Limits, LimitsError, micro_from_cost_units
from core.money import FINETUNE_PREFIX, cost_units_text
from core.redis_conn import connect
from core.scope import Scope, ScopeError
from finetunes.registry import FineTune, RegistryError
from finetunes.service import DeployError, FineTuneService
from serve_app.callers.admin_token import ENV as ADMIN_TOKEN_ENV
from serve_app.callers.admin_token import read_admin_token
from serve_app.local_redis import LocalRedis, LocalRedisError


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def redis_url_for(settings: Settings) -> Iterator[str]:
    """The configured Redis, or the embedded one (started for the command if not running)."""
    if settings.redis_url:
        yield settings.redis_url
        return
    with LocalRedis(settings.data_dir) as local:
        yield local.url


def _provider_lines(settings: Settings) -> list[str]:
    enabled = set(settings.enabled_providers())
    return [
        f"    {name:<10} {'on ' if name in enabled else 'off'}  "
        + (f"models: {', '.join(spec.models)}" if name in enabled else f"(set {spec.credential_env} to enable)")
        for name, spec in settings.providers.items()
    ]


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from serve_app import runtime

    admin = read_admin_token(os.environ)
    if os.environ.get(ADMIN_TOKEN_ENV) and not admin.on:  # a guessable token would open the admin API
        raise ConfigError(f"refusing to start: {admin.off_because}")
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = settings.model_copy(update=overrides)
    _, generated = load_key_material(settings, create=True)
    local = None if settings.redis_url else LocalRedis(settings.data_dir)
    try:
        redis_url = settings.redis_url or local.start(hold=True).url
        say("NeuroAPI gateway")
        say(f"  redis:   {'external (NEUROAPI_REDIS_URL)' if local is None else f'local redis-server, data in {local.folder}'}")
        if generated:
            say(f"  secrets: generated development key material in {settings.data_dir / 'secrets.json'}"
                " (set NEUROAPI_PEPPERS and NEUROAPI_ENVELOPE_KEYS in production)")
        say("  providers:")
        for line in _provider_lines(settings):
            say(line)
        if not settings.enabled_providers():
            say("  no provider is configured: set OPENAI_API_KEY, ANTHROPIC_API_KEY or DEEPSEEK_API_KEY")
        in_house = settings.served_in_house()
        say("  in-house models: " + (", ".join(in_house) if in_house else "none (NEUROAPI_IN_HOUSE_MODELS=0)"))
        say("  starting Ray Serve (and loading the in-house models) ...")
        stop = threading.Event()
        # Ctrl-C in a terminal signals the whole process group (Ray's processes too), and a
        # second one may follow: the first stops us, later ones are ignored while we shut down.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        url = runtime.start_gateway(settings, redis_url, should_stop=stop.is_set)
        if not stop.is_set():
            for name, engine in runtime.in_house_engines(settings).items():
                say(f"    {name:<24} served by {engine}")
            say(f"  metrics: {runtime.metrics_url()}  (Prometheus; NeuroAPI's are ray_neuroapi_*)")
            say(f"  ready:   {url}/v1  (OpenAI-compatible; Ctrl-C stops)")
        while not stop.wait(1.0):
            pass
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        say("stopping ...")
        runtime.stop_gateway()
        return 0
    finally:
        if local is not None:
            local.stop()


def _billing(redis: Redis, settings: Settings) -> BillingService | None:
    """Billing, when this process's environment has the Stripe key (as the gateway's does)."""
    if not settings.billing_enabled():
        return None
    stripe = StripeBilling(os.environ[STRIPE_SECRET_VARIABLE], settings.stripe_api_base)
    # The email and the Stripe ids are sealed at rest: the CLI opens them with its key material.
    sealer = AccountSealer(_material(settings))
    return BillingService(settings, redis, stripe, ids=SealedBillingIds(redis, sealer),
                          email_of=AccountStore(redis, sealer).email_of)


def _material(settings: Settings):
    material, generated = load_key_material(settings, create=True)
    if generated:
        say(f"generated development key material in {settings.data_dir / 'secrets.json'}")
    return material


def _accounts(redis: Redis, settings: Settings) -> AccountStore:
    """Accounts with their emails opened: the email is sealed and its index keyed with the key
    material (``actors.accounts.sealing``), which the CLI loads as the verifier pool does."""
    return AccountStore(redis, AccountSealer(_material(settings)))


async def _accounts_create(redis: Redis, settings: Settings, email: str) -> int:
    account = await _accounts(redis, settings).create(email)
    say(f"created account {account.id} for {account.email}")
    billing = _billing(redis, settings)
    if billing is not None:
        await billing.customer_at_signup(account.id)
        await billing.aclose()
    return 0


async def _accounts_export(redis: Redis, settings: Settings, email: str) -> int:
    account = await _accounts(redis, settings).require(email)
    print(json.dumps(await export_account(redis, account.id, AccountSealer(_material(settings))), indent=2))
    return 0


async def _accounts_delete(redis: Redis, settings: Settings, email: str) -> int:
    account = await _accounts(redis, settings).require(email)
    await delete_account(redis, account.id, actor=f"cli:{getpass.getuser()}")
    say(f"deleted account {account.id}: its keys are rejected everywhere; its data goes with the next purge batch")
    return 0


async def _purge(redis: Redis, settings: Settings) -> int:
    done = await housekeeping_pass(redis, settings)
    if done is None:
        raise ConfigError("another housekeeping pass is running; try again in a moment")
    for account_id in done["purged"]:
        print(f"purged\t{account_id}")
    say(f"purged {len(done['purged'])} account(s); trimmed " +
        ", ".join(f"{count} {what}" for what, count in done["trimmed"].items()))
    return 0


async def _billing_report(redis: Redis, settings: Settings) -> int:
    billing = _billing(redis, settings)
    if billing is None:
        raise ConfigError(f"billing is off: set {STRIPE_SECRET_VARIABLE}")
    try:
        sent = await billing.reporter().report_once()
    finally:
        await billing.aclose()
    for event in sent:
        print(f"{event.account_id}\t{event.month}\t{event.identifier}\t{event.value}\t{event.outcome}")
    accepted = [event for event in sent if event.outcome == "sent"]
    say(f"{len(accepted)} meter event(s) accepted, {sum(e.value for e in accepted)} cost_units; "
        f"{len(sent) - len(accepted)} left pending for the next pass")
    return 0 if len(accepted) == len(sent) else 1


async def _accounts_scope(redis: Redis, settings: Settings, args: argparse.Namespace) -> int:
    service = ScopeService(redis, set(settings.providers))
    account = await _accounts(redis, settings).require(args.email)  # reported before a bad option
    _, scope = await service.lookup(account.id)
    email = normalise_email(args.email)  # as the account stores it
    if args.clear or args.in_house_only or args.exclude_provider:
        wanted = Scope(args.in_house_only, frozenset(args.exclude_provider or ()))
        if args.clear and wanted.restricted:
            raise ScopeError("--clear takes no other option")
        _, confirmed = await service.set(account.id, wanted, actor=f"cli:{getpass.getuser()}")
        say(f"scope of {email} set; {confirmed} gateway replica(s) confirmed")
        _, scope = await service.lookup(account.id)
    excluded = ",".join(sorted(scope.excluded_providers)) or "-"
    print(f"{email}\tin_house_only={'yes' if scope.in_house_only else 'no'}\texcluded={excluded}")
    return 0


async def _usage(redis: Redis, settings: Settings, email: str, month: str | None) -> int:
    account = await _accounts(redis, settings).require(email)
    if month is not None and not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
        raise ConfigError("--month: use YYYY-MM")
    document = await usage_document(UsageStore(redis), account.id, [month] if month else None)
    print(json.dumps(document, indent=2))
    return 0


def _finetune_line(ft: FineTune) -> str:
    owner = ft.owner_account or "public"
    return f"{ft.name}\tv{ft.version}\t{ft.state}\tbase={ft.base_model}\trank={ft.rank}\towner={owner}\t{ft.digest}"


async def _finetunes(redis: Redis, settings: Settings, args: argparse.Namespace) -> int:
    service = FineTuneService(settings, redis, _accounts(redis, settings).id_of)
    actor = f"cli:{getpass.getuser()}"
    if args.action == "deploy":
        started = time.monotonic()
        try:
            live = await service.deploy(Path(args.path), args.base, args.name, args.account, actor, progress=True)
        except DeployError as error:
            say(f"neuroapi: not deployed: {error}" + (f" ({error.where})" if error.where else ""))
            return 1
        say(f"deployed {live.key} on {live.base_model} in {time.monotonic() - started:.1f}s; "
            f"live for the next request as model '{FINETUNE_PREFIX}{live.name}'")
        print(_finetune_line(live))
    elif args.action == "list":
        for name, live in await service.listing():
            print(_finetune_line(live) if live else f"{name}\t-\tretired")
    elif args.action == "show":
        for version in await service.show(args.name):
            print(_finetune_line(version))
    else:
        changed = await (service.rollback if args.action == "rollback" else service.retire)(args.name, actor)
        say(f"{args.action}: {changed.key} is now {changed.state}")
        print(_finetune_line(changed))
    return 0


def _key_store(redis: Redis, settings: Settings) -> KeyStore:
    return KeyStore(redis, KeyCrypto(_material(settings)))


async def _keys_create(redis: Redis, settings: Settings, email: str, name: str) -> int:
    account = await _accounts(redis, settings).require(email)
    plaintext, info = await _key_store(redis, settings).create(account.id, name)
    say(f"created key {info.prefix} for {account.email}; it is shown once, store it now:")
    print(plaintext, flush=True)
    return 0


async def _keys_list(redis: Redis, settings: Settings, email: str) -> int:
    account = await _accounts(redis, settings).require(email)
    for info in await _key_store(redis, settings).list(account.id):
        print(f"{info.prefix}\t{info.status}\t{info.name}")
    return 0


async def _keys_revoke(redis: Redis, settings: Settings, prefix: str) -> int:
    confirmed = await _key_store(redis, settings).revoke(prefix)
    say(f"revoked {prefix}; {confirmed} gateway replica(s) confirmed")
    return 0


def _limits_text(limits: Limits) -> str:
    shown = limits.as_dict()
    return "\t".join(f"{name}={'-' if value is None else ','.join(value) if name == 'models' else value}"
                     for name, value in shown.items())


async def _keys_limits(redis: Redis, args: argparse.Namespace) -> int:
    settings = LimitSettings(redis)
    current = await settings.key_limits(args.prefix)  # an unknown key is reported before a bad option
    changes = {name: value for name, value in (
        ("rpm", args.rpm), ("tpm", args.tpm), ("monthly_budget_cost_units", args.budget),
        ("models", args.models.split(",") if args.models is not None else None)) if value is not None}
    if args.clear or changes:
        if args.clear and changes:
            raise LimitsError("--clear takes no other option")
        current, confirmed = await settings.update_ceiling(args.prefix, changes, f"cli:{getpass.getuser()}",
                                                           clear=args.clear)
        say(f"limits of {args.prefix} set; {confirmed} gateway replica(s) confirmed")
    print(f"{args.prefix}\toperator\t{_limits_text(current.ceiling)}")
    print(f"{args.prefix}\tin_force\t{_limits_text(current.effective)}")
    return 0


async def _accounts_budget(redis: Redis, settings: Settings, args: argparse.Namespace) -> int:
    account = await _accounts(redis, settings).require(args.email)
    limits = LimitSettings(redis)
    budget = await limits.account_budget(account.id)
    if args.clear or args.monthly is not None:
        if args.clear and args.monthly is not None:
            raise LimitsError("--clear takes no other option")
        budget = None if args.clear else micro_from_cost_units(args.monthly, "--monthly")
        confirmed = await limits.set_account_budget(account.id, budget, f"cli:{getpass.getuser()}")
        say(f"monthly budget of {normalise_email(args.email)} set; {confirmed} gateway replica(s) confirmed")
    shown = "-" if budget is None else cost_units_text(budget)
    print(f"{normalise_email(args.email)}\tmonthly_budget_cost_units={shown}")
    return 0


async def _secrets_rotate(redis: Redis, settings: Settings, kind: str, resume: bool) -> int:
    report = await rotate(redis, settings, kind, add_version=not resume)
    say(report.summary())
    if report.left:
        say(f"  keep the older {kind} versions and re-run; a record that stays does not open or verify "
            "under the key material this command has")
        return 1
    return 0


async def _run(redis_url: str, action) -> int:
    redis = connect(redis_url)
    try:
        return await action(redis)
    finally:
        await redis.aclose()


def build_parser() -> argparse.ArgumentParser:
    # --config is accepted before or after the command (`neuroapi serve --config x.yaml`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="a YAML settings file (default: NEUROAPI_CONFIG)")
    parser = argparse.ArgumentParser(prog="neuroapi", description=__doc__, parents=[common])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway", parents=[common])
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)

    accounts = commands.add_parser("accounts", help="manage accounts").add_subparsers(dest="action", required=True)
    accounts.add_parser("create", help="create an account", parents=[common]).add_argument("email")
    scope = accounts.add_parser("scope", parents=[common],
                                help="show or set where an account's traffic may go (every replica, at once)")
    scope.add_argument("email")
    scope.add_argument("--in-house-only", action="store_true", help="only in-house models, never a third party")
    scope.add_argument("--exclude-provider", action="append", metavar="NAME", help="never this provider (repeatable)")
    scope.add_argument("--clear", action="store_true", help="no restriction")
    budget = accounts.add_parser("budget", parents=[common],
                                 help="show or set an account's monthly budget across its keys (every replica, at once)")
    budget.add_argument("email")
    budget.add_argument("--monthly", metavar="COST_UNITS", help="the budget per UTC month, in cost_units (exact)")
    budget.add_argument("--clear", action="store_true", help="no account budget")
    accounts.add_parser("export", parents=[common],
                        help="everything NeuroAPI holds about an account, as JSON").add_argument("email")
    accounts.add_parser("delete", parents=[common], help="delete an account: its keys rejected at once, "
                        "its data purged by the next purge batch").add_argument("email")
    commands.add_parser("purge", parents=[common],
                        help="run the housekeeping pass now: purge deleted accounts, apply the retention windows")

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="mint a key; prints it alone on stdout, once", parents=[common])
    create.add_argument("email")
    create.add_argument("--name", default="")
    keys.add_parser("list", help="list an account's key prefixes", parents=[common]).add_argument("email")
    keys.add_parser("revoke", help="revoke a key: rejected everywhere once this returns",
                    parents=[common]).add_argument("prefix")
    limits = keys.add_parser("limits", parents=[common], help="show or set a key's operator limits; its owner "
                             "may only go under them (every replica, at once)")
    limits.add_argument("prefix")
    limits.add_argument("--rpm", type=int, help="requests per minute")
    limits.add_argument("--tpm", type=int, help="prompt + completion tokens per minute")
    limits.add_argument("--budget", metavar="COST_UNITS", help="the key's budget per UTC month, in cost_units")
    limits.add_argument("--models", metavar="A,B", help="the only models/modes (or ft: names) it may call")
    limits.add_argument("--clear", action="store_true", help="remove every operator limit of the key")

    usage = commands.add_parser("usage", help="an account's usage this month and last (or --month)",
                                parents=[common])
    usage.add_argument("email")
    usage.add_argument("--month", help="YYYY-MM")

    finetunes = commands.add_parser("finetunes", help="LoRA fine-tunes on the in-house models").add_subparsers(
        dest="action", required=True)
    deploy = finetunes.add_parser("deploy", parents=[common],
                                  help="validate a PEFT LoRA folder, store it, make it live as ft:NAME")
    deploy.add_argument("path")
    deploy.add_argument("--base", required=True, help="the in-house catalog model it was trained on")
    deploy.add_argument("--name", required=True)
    deploy.add_argument("--account", metavar="EMAIL", help="callable only by this account's keys")
    finetunes.add_parser("list", parents=[common], help="every fine-tune and its live version")
    for action, what in (("show", "every version of a fine-tune"),
                         ("rollback", "make the previous version live again"),
                         ("retire", "stop serving it (404 from the next request)")):
        finetunes.add_parser(action, parents=[common], help=what).add_argument("name")

    billing = commands.add_parser("billing", help="Stripe billing").add_subparsers(dest="action", required=True)
    billing.add_parser("report", parents=[common],
                       help="send subscribed accounts' unreported usage to Stripe now; prints each meter event")

    rotations = commands.add_parser("secrets", help="rotate key material").add_subparsers(dest="action", required=True)
    for kind, what in (("envelope", "re-encrypt every key record under a new envelope key"),
                       ("pepper", "re-hash every key record under a new pepper")):
        rotation = rotations.add_parser(f"rotate-{kind}", parents=[common], help=what + "; keys keep working")
        rotation.add_argument("--resume", action="store_true",
                              help="finish an interrupted rotation: add no version, migrate to the newest")
    return parser


def main(argv: list[str] | None = None) -> int:
    logs.install()
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(getattr(args, "config", None))
        if args.command == "serve":
            return cmd_serve(args, settings)
        action = {
            ("accounts", "create"): lambda redis: _accounts_create(redis, settings, args.email),
            ("accounts", "scope"): lambda redis: _accounts_scope(redis, settings, args),
            ("accounts", "budget"): lambda redis: _accounts_budget(redis, settings, args),
            ("accounts", "export"): lambda redis: _accounts_export(redis, settings, args.email),
            ("accounts", "delete"): lambda redis: _accounts_delete(redis, settings, args.email),
            ("purge", None): lambda redis: _purge(redis, settings),
            ("usage", None): lambda redis: _usage(redis, settings, args.email, args.month),
            ("keys", "create"): lambda redis: _keys_create(redis, settings, args.email, args.name),
            ("keys", "list"): lambda redis: _keys_list(redis, settings, args.email),
            ("keys", "revoke"): lambda redis: _keys_revoke(redis, settings, args.prefix),
            ("keys", "limits"): lambda redis: _keys_limits(redis, args),
            **{("finetunes", a): (lambda redis: _finetunes(redis, settings, args))
               for a in ("deploy", "list", "show", "rollback", "retire")},
            ("billing", "report"): lambda redis: _billing_report(redis, settings),
            ("secrets", "rotate-envelope"): lambda redis: _secrets_rotate(redis, settings, "envelope", args.resume),
            ("secrets", "rotate-pepper"): lambda redis: _secrets_rotate(redis, settings, "pepper", args.resume),
        }[(args.command, getattr(args, "action", None))]
        with redis_url_for(settings) as url:
            return asyncio.run(_run(url, action))
    except (ConfigError, LocalRedisError, AccountError, LookupError, InvalidationTimeout, ScopeError,
            RegistryError, LimitsError) as error:
        say(f"neuroapi: {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
