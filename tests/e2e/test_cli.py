"""The `neuroapi` command, run as a user runs it, against the session's gateway."""

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

NEUROAPI = Path(sys.executable).parent / "neuroapi"  # the installed console script


def neuroapi(gateway, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **gateway.environ}
    return subprocess.run([str(NEUROAPI), *args, "--config", str(gateway.config_path)],
                          env=env, capture_output=True, text=True, timeout=60)


def test_account_key_lifecycle_with_no_grace_after_revoke(gateway):
    email = f"cli-{os.getpid()}@example.com"
    created = neuroapi(gateway, "accounts", "create", email)
    assert created.returncode == 0, created.stderr
    assert neuroapi(gateway, "accounts", "create", email).returncode == 2  # unique

    minted = neuroapi(gateway, "keys", "create", email, "--name", "laptop")
    assert minted.returncode == 0, minted.stderr
    key = minted.stdout.strip()
    assert re.fullmatch(r"neuro_[a-z0-9]{8}_[0-9A-Za-z]{38}", key)  # the key alone on stdout
    prefix = key.rsplit("_", 1)[0]

    listed = neuroapi(gateway, "keys", "list", email)
    assert listed.stdout.split() == [prefix, "active", "laptop"]
    assert key not in listed.stdout + listed.stderr

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers).status_code == 200

    revoked = neuroapi(gateway, "keys", "revoke", prefix)
    assert revoked.returncode == 0, revoked.stderr
    confirmed = re.search(r"(\d+) gateway replica\(s\) confirmed", revoked.stderr)
    assert confirmed and int(confirmed.group(1)) >= 2  # every key-holding replica (two ingress at least)
    assert httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers).status_code == 401
    assert neuroapi(gateway, "keys", "list", email).stdout.split()[1] == "revoked"


def test_cli_errors_are_one_clear_line(gateway):
    result = neuroapi(gateway, "keys", "create", "nobody@example.com")
    assert result.returncode == 2 and result.stderr.strip() == "neuroapi: no account with this email"
    result = neuroapi(gateway, "keys", "revoke", "not-a-prefix")
    assert result.returncode == 2 and "not a key prefix" in result.stderr
