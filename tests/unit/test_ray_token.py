"""Ray's internal ports listen on every interface, guarded by its cluster token; Ray writes that
token world-readable, and `neuroapi serve` makes it its user's alone."""

import stat

from serve_app.runtime import keep_ray_token_private


def test_rays_token_file_is_made_private(tmp_path, monkeypatch):
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir(mode=0o755)
    token.write_text("f" * 64)
    token.chmod(0o644)  # as Ray leaves it
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    keep_ray_token_private()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700


def test_an_operators_own_token_is_left_as_it_is(tmp_path, monkeypatch):
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("f" * 64)
    token.chmod(0o644)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "elsewhere"))
    keep_ray_token_private()
    assert stat.S_IMODE(token.stat().st_mode) == 0o644
