"""Settings: documented, validated, and failing fast with the setting to change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings, SettingsError, settings_table

CONFIGURATION_DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_configuration_doc_is_current() -> None:
    assert CONFIGURATION_DOC.read_text(encoding="utf-8") == settings_table() + "\n", (
        "docs/configuration.md is out of date: run `python -m app.config > docs/configuration.md`"
    )


def test_no_redis_url_names_the_setting() -> None:
    with pytest.raises(SettingsError, match="MEMSERVE_REDIS_URL"):
        Settings(redis_url=None).require_redis_url()


def test_missing_checkpoints_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="MEMSERVE_CHECKPOINT_DIR"):
        Settings(checkpoint_dir=tmp_path).check_checkpoints()


@pytest.mark.parametrize("prefix", ["", "a{b", "a:b", "a b"])
def test_key_prefix_cannot_break_the_key_schema(prefix: str) -> None:
    with pytest.raises(ValidationError, match="MEMSERVE_KEY_PREFIX"):
        Settings(key_prefix=prefix)


def test_environment_is_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMSERVE_MAX_BATCH", "7")
    assert Settings().max_batch == 7


def test_api_keys_come_from_the_setting_and_the_file_and_fail_fast(tmp_path: Path) -> None:
    from app.api.auth import KeyRing, key_digest
    from app.config import ApiKey
    from app.errors import Unauthorized

    a, b = "msk_a" * 8, "msk_b" * 8
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps([{"tenant": "bee", "sha256": key_digest(b).upper(), "burst": 5}]))
    ay = ApiKey(tenant="ay", sha256=key_digest(a), max_sessions=0)
    s = Settings(api_keys=[ay], api_keys_file=keys_file)
    ring = KeyRing(s)
    assert ring.authenticate(f"Bearer {a}").name == "ay"
    assert ring.authenticate(f"bearer  {b} ").name == "bee"  # scheme is case-insensitive
    assert ring.authenticate(f"Bearer {a}").max_sessions == 0  # 0: unlimited, not "the default"
    assert ring.authenticate(f"Bearer {b}").max_sessions == s.max_sessions_per_key
    assert ring.authenticate(f"Bearer {b}").burst == 5
    for header in (None, "", a, f"Token {a}", f"Bearer {a}x"):
        with pytest.raises(Unauthorized):
            ring.authenticate(header)
    with pytest.raises(SettingsError, match="twice"):
        Settings(api_keys=[ApiKey(tenant="c", sha256=key_digest(b))], api_keys_file=keys_file).all_api_keys()
    with pytest.raises(SettingsError, match="MEMSERVE_AUTH=off"):
        Settings().all_api_keys()
    assert Settings(auth="off").all_api_keys() == []
    with pytest.raises(ValueError, match="tenant"):
        ApiKey(tenant="no spaces", sha256=key_digest(a))


def test_serve_turns_auth_off_only_when_no_keys_and_no_auth_setting_are_given(tmp_path: Path) -> None:
    from app.api.auth import key_digest
    from app.cli import _local_auth
    from app.config import ApiKey

    assert _local_auth(Settings()).auth == "off"
    keyed = Settings(api_keys=[ApiKey(tenant="a", sha256=key_digest("k"))])
    assert _local_auth(keyed).auth == "keys"
    assert _local_auth(Settings(api_keys_file=tmp_path / "keys.json")).auth == "keys"
    explicit = _local_auth(Settings(auth="keys"))  # asked for keys, gave none: startup fails
    assert explicit.auth == "keys"
    with pytest.raises(SettingsError, match="MEMSERVE_API_KEYS"):
        explicit.all_api_keys()
