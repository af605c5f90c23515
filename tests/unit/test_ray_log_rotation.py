"""Ray's and Serve's log files are bounded: ``neuroapi serve`` (serve_app.runtime) starts Ray with
the rotation settings in its environment, which Ray's processes and Serve's replica log handler
read (``ray._private.node.Node.max_bytes`` / ``backup_count``). On a running gateway:
``tests/integration/test_retention_live.py::test_the_gateways_ray_and_serve_logs_rotate``."""

import os

import pytest

from serve_app import runtime

ROTATION = ("RAY_ROTATION_MAX_BYTES", "RAY_ROTATION_BACKUP_COUNT")


@pytest.fixture
def environ(monkeypatch) -> dict[str, str]:
    """A private copy of the environment, without any rotation setting."""
    copy = {name: value for name, value in os.environ.items() if name not in ROTATION}
    monkeypatch.setattr(os, "environ", copy)
    return copy


def test_ray_starts_with_log_rotation_by_default(environ):
    runtime.prepare_environment()
    assert environ["RAY_ROTATION_MAX_BYTES"] == str(64 << 20)
    assert environ["RAY_ROTATION_BACKUP_COUNT"] == "5"


def test_an_operators_rotation_settings_win(environ):
    environ.update(RAY_ROTATION_MAX_BYTES=str(1 << 20), RAY_ROTATION_BACKUP_COUNT="2")
    runtime.prepare_environment()
    assert (environ["RAY_ROTATION_MAX_BYTES"], environ["RAY_ROTATION_BACKUP_COUNT"]) == (str(1 << 20), "2")


def test_ray_reads_the_rotation_settings_we_set():
    """The names are Ray's: its node object (whose values Serve's replica file handler takes)
    reads them from the environment."""
    import inspect

    from ray._private import node
    from ray.serve._private import logging_utils

    source = inspect.getsource(node.Node.__init__)
    assert all(f'os.getenv("{name}"' in source for name in ROTATION)
    handler = inspect.getsource(logging_utils.configure_component_logger)
    assert "_global_node.max_bytes" in handler and "_global_node.backup_count" in handler
