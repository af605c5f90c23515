"""Key material for API keys: versioned peppers (HMAC keys) and versioned envelope keys (Fernet).

Sources, first found wins: the environment (``NEUROAPI_PEPPERS`` and ``NEUROAPI_ENVELOPE_KEYS``,
each ``"<version>:<base64url key>,..."``), else a JSON secrets file (``secrets_file`` setting, or
``<data_dir>/secrets.json``). With neither, a development file is generated (mode 0600) and the
caller is told so. The highest version of each is the current one; older ones still verify and
decrypt until a rotation has moved every record off them. ``add_key_version`` adds the next
version to a secrets file (``neuroapi secrets rotate-*``)."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet

from config.settings import ConfigError, Settings

ENVIRONMENT_SOURCE = "environment"
# What each kind of key material is called in a secrets file.
FILE_SECTIONS = {"pepper": "peppers", "envelope": "envelope_keys"}


@dataclass(frozen=True)
class KeyMaterial:
    peppers: dict[int, bytes]
    envelope_keys: dict[int, bytes]
    source: str

    def __repr__(self) -> str:
        return (
            f"KeyMaterial(peppers=v{sorted(self.peppers)}, "
            f"envelope_keys=v{sorted(self.envelope_keys)}, source={self.source!r})"
        )


def _parse_versions(text: str, what: str) -> dict[int, str]:
    versions: dict[int, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        version, sep, value = item.partition(":")
        if not sep or not version.isdigit() or not value:
            raise ConfigError(f"{what}: each entry must be '<version>:<key>' (version an integer)")
        versions[int(version)] = value
    if not versions:
        raise ConfigError(f"{what}: no keys given")
    return versions


def _decode_pepper(value: str, what: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        raise ConfigError(f"{what}: not base64url") from None
    if len(raw) < 32:
        raise ConfigError(f"{what}: a pepper needs at least 32 bytes")
    return raw


def _check_fernet(value: str, what: str) -> bytes:
    try:
        Fernet(value)
    except ValueError:
        raise ConfigError(f"{what}: not a Fernet key (32 bytes, base64url)") from None
    return value.encode()


def _material(peppers: Mapping[int, str], envelope: Mapping[int, str], source: str) -> KeyMaterial:
    return KeyMaterial(
        peppers={v: _decode_pepper(k, f"pepper v{v}") for v, k in peppers.items()},
        envelope_keys={v: _check_fernet(k, f"envelope key v{v}") for v, k in envelope.items()},
        source=source,
    )


def secrets_path(settings: Settings) -> Path:
    return settings.secrets_file or settings.data_dir / "secrets.json"


def _new_key(kind: str) -> str:
    if kind == "pepper":
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    return Fernet.generate_key().decode()


def _write_dev_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"peppers": {"1": _new_key("pepper")}, "envelope_keys": {"1": _new_key("envelope")}}
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(content, handle, indent=2)


def load_key_material(
    settings: Settings, *, create: bool = False, environ: Mapping[str, str] | None = None
) -> tuple[KeyMaterial, bool]:
    """The key material, and whether a development secrets file was generated just now."""
    environ = os.environ if environ is None else environ
    peppers, envelope = environ.get("NEUROAPI_PEPPERS"), environ.get("NEUROAPI_ENVELOPE_KEYS")
    if peppers or envelope:
        if not (peppers and envelope):
            raise ConfigError("set both NEUROAPI_PEPPERS and NEUROAPI_ENVELOPE_KEYS, or neither")
        return _material(
            _parse_versions(peppers, "NEUROAPI_PEPPERS"),
            _parse_versions(envelope, "NEUROAPI_ENVELOPE_KEYS"),
            ENVIRONMENT_SOURCE,
        ), False
    path = secrets_path(settings)
    generated = False
    if not path.exists():
        if not create or settings.secrets_file is not None:
            raise ConfigError(f"no key material: {path} does not exist and no environment keys")
        try:
            _write_dev_file(path)
            generated = True
        except FileExistsError:  # another process generated it first
            pass
    try:
        data = json.loads(path.read_text())
        return _material(
            {int(v): k for v, k in data["peppers"].items()},
            {int(v): k for v, k in data["envelope_keys"].items()},
            str(path),
        ), generated
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ConfigError(f"{path}: unreadable secrets file ({type(error).__name__})") from None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive use of the secrets file, so two rotations cannot each add "the next" version
    and one silently replace the other. The lock is on the file's inode: after an os.replace by
    the previous holder, lock the new one."""
    while True:
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except OSError as error:
            raise ConfigError(f"{path}: cannot open the secrets file ({type(error).__name__})") from None
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(descriptor).st_ino:
            break
        os.close(descriptor)
    try:
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _replace_atomically(path: Path, content: dict) -> None:
    """Readers see the old file or the new one, never a part (temp file + os.replace), 0600."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(content, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


def add_key_version(path: Path, kind: str) -> int:
    """Add a freshly generated key of ``kind`` ("pepper" or "envelope") to the secrets file at
    ``path`` as the next version (the new current one); returns that version. Older versions
    stay, so records under them keep verifying and decrypting until they are migrated."""
    section = FILE_SECTIONS[kind]
    with _locked(path):
        try:
            content = json.loads(path.read_text())
            peppers = {int(v): k for v, k in content["peppers"].items()}
            envelope = {int(v): k for v, k in content["envelope_keys"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ConfigError(f"{path}: unreadable secrets file ({type(error).__name__})") from None
        _material(peppers, envelope, str(path))  # refuse to extend a file that would not load
        version = max(peppers if kind == "pepper" else envelope, default=0) + 1
        content[section] = {**content[section], str(version): _new_key(kind)}
        _replace_atomically(path, content)
    return version
