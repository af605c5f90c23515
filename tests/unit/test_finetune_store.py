"""The artifact store: verified, atomic copies of validated adapters."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from finetunes.artifact import CONFIG_FILE, WEIGHTS_FILE, ArtifactError, validate_adapter  # noqa: E402
from finetunes.store import ArtifactStore  # noqa: E402
from tests.support.adapter_files import BASE, FAKE, make_adapter  # noqa: E402


@pytest.fixture
def adapter(tmp_path):
    folder = make_adapter(tmp_path / "trained")
    (folder / "README.md").write_text("model card")
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-5" / "trainer_state.json").write_text("{}")
    return folder, validate_adapter(folder, BASE, FAKE, max_lora_rank=16)


def test_put_copies_the_validated_files(tmp_path, adapter):
    folder, info = adapter
    store = ArtifactStore(tmp_path / "store")
    path = store.put(folder, "support-bot", 3, info.digest, progress=False)
    assert path == store.path_for("support-bot", 3, info.digest)
    assert path == tmp_path / "store" / "support-bot" / f"v3-{info.digest.removeprefix('sha256:')[:12]}"
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        assert (path / name).read_bytes() == (folder / name).read_bytes()
    assert validate_adapter(path, BASE, FAKE, max_lora_rank=16).digest == info.digest
    assert [p.name for p in (tmp_path / "store").iterdir()] == ["support-bot"]  # no staging left


def test_progress_bar(tmp_path, adapter, capsys):
    folder, info = adapter
    ArtifactStore(tmp_path / "store").put(folder, "support-bot", 1, info.digest, progress=True)
    assert "copying support-bot v1" in capsys.readouterr().err


def test_digest_mismatch_leaves_nothing(tmp_path, adapter):
    folder, info = adapter
    store = ArtifactStore(tmp_path / "store")
    (folder / CONFIG_FILE).write_text((folder / CONFIG_FILE).read_text().replace('"r": 4', '"r": 5'))
    with pytest.raises(ArtifactError) as raised:
        store.put(folder, "support-bot", 1, info.digest, progress=False)
    assert "changed after validation" in raised.value.message and raised.value.where == str(folder)
    assert not store.path_for("support-bot", 1, info.digest).exists()
    assert [p for p in (tmp_path / "store").rglob("*") if p.is_file()] == []
    assert not [p for p in (tmp_path / "store").iterdir() if p.name.startswith(".staging")]


def test_retry_is_idempotent(tmp_path, adapter):
    folder, info = adapter
    store = ArtifactStore(tmp_path / "store")
    first = store.put(folder, "support-bot", 1, info.digest, progress=False)
    assert store.put(folder, "support-bot", 1, info.digest, progress=False) == first


def test_existing_folder_with_other_contents(tmp_path, adapter):
    folder, info = adapter
    store = ArtifactStore(tmp_path / "store")
    path = store.put(folder, "support-bot", 1, info.digest, progress=False)
    (path / WEIGHTS_FILE).write_bytes(b"corrupted")
    with pytest.raises(ArtifactError) as raised:
        store.put(folder, "support-bot", 1, info.digest, progress=False)
    assert raised.value.where == str(path) and "other contents" in raised.value.message


@pytest.mark.parametrize(("name", "version", "digest", "where"), [
    ("../escape", 1, "sha256:" + "0" * 64, "name"),
    ("Support", 1, "sha256:" + "0" * 64, "name"),
    ("ok", 0, "sha256:" + "0" * 64, "version"),
    ("ok", 1, "md5:abc", "digest"),
])
def test_path_for_refuses_bad_parts(tmp_path, name, version, digest, where):
    with pytest.raises(ArtifactError) as raised:
        ArtifactStore(tmp_path).path_for(name, version, digest)
    assert raised.value.where == where
