"""Settings: documented, validated, and failing fast with the setting to change."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings, SettingsError, settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_settings_table_is_current() -> None:
    assert settings_table() in README.read_text(), "run `python -m app.config` and paste the table"


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
