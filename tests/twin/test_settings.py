"""Settings: environment beats .env beats defaults; secrets never shown; bad values named."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import pytest

from bot.log_filter import REDACTED, SecretFilter
from twin.durations import format_duration, parse_duration
from twin.settings import Settings, SettingsError, describe, load_settings

TOKEN = "7000000001:AAFakeTokenForTestsOnly_abcdefghijklmno"


def test_defaults_follow_the_architecture(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.data_dir == Path("twin-data")
    assert settings.resolved_database_url == "sqlite:///twin-data/twin.db"
    assert settings.session_gap == timedelta(days=1)
    assert settings.retrain_every is None
    assert settings.bot_api_url == "https://api.telegram.org/bot"


def test_environment_beats_env_file_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    Path(".env").write_text("TWIN_SESSION_GAP=6h\nTWIN_BASE_MODEL=from-file\nTWIN_OWNER_ID=5\n")
    monkeypatch.setenv("TWIN_BASE_MODEL", "from-env")
    settings = load_settings()
    assert settings.base_model == "from-env"
    assert settings.session_gap == timedelta(hours=6)
    assert settings.owner_id == 5
    sources = {variable: source for variable, _, source in describe(settings)}
    assert sources["TWIN_BASE_MODEL"] == "environment"
    assert sources["TWIN_SESSION_GAP"] == ".env"
    assert sources["TWIN_DATA_DIR"] == "default"


def test_flags_beat_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWIN_DATA_DIR", "/env/dir")
    assert load_settings(data_dir=Path("/flag/dir")).data_dir == Path("/flag/dir")


def test_secrets_are_masked_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWIN_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TWIN_API_HASH", "0123456789abcdef0123456789abcdef")
    monkeypatch.setenv("TWIN_DATABASE_URL", "postgresql+psycopg://twin:hunter2pass@db/twin")
    settings = load_settings()
    shown = repr(settings) + str(settings) + repr(describe(settings))
    assert TOKEN not in shown
    assert "0123456789abcdef0123456789abcdef" not in shown
    assert "hunter2pass" not in repr(describe(settings))
    assert settings.bot_token.get_secret_value() == TOKEN
    assert settings.secrets == [settings.api_hash.get_secret_value(), TOKEN, "hunter2pass"]


def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWIN_SESSION_GAP", "tomorrow")
    monkeypatch.setenv("TWIN_OWNER_ID", "me")
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert "TWIN_SESSION_GAP" in str(error.value) and "TWIN_OWNER_ID" in str(error.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1d", timedelta(days=1)),
        ("6h", timedelta(hours=6)),
        ("90m", timedelta(minutes=90)),
        ("1h30m", timedelta(minutes=90)),
        ("2w", timedelta(weeks=2)),
        ("45s", timedelta(seconds=45)),
    ],
)
def test_durations_parse_and_print_back(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    assert parse_duration(format_duration(expected)) == expected


@pytest.mark.parametrize("text", ["", "1", "d", "1x", "-1d", "0h", "1d and more"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_log_filter_redacts_secrets_in_messages_and_tracebacks() -> None:
    records = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep()
    handler.addFilter(SecretFilter([TOKEN]))
    logger = logging.getLogger("test.secrets")
    logger.addHandler(handler)
    try:
        logger.warning("calling https://api.telegram.org/bot%s/getMe", TOKEN)
        try:
            raise RuntimeError(f"bad url /bot{TOKEN}/sendMessage")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert records and all(TOKEN not in record for record in records)
    assert REDACTED in records[0] and REDACTED in records[1]


def test_settings_class_is_the_public_contract() -> None:
    names = {f"TWIN_{name.upper()}" for name in Settings.model_fields}
    documented = {
        "TWIN_DATA_DIR",
        "TWIN_DATABASE_URL",
        "TWIN_BASE_MODEL",
        "TWIN_API_ID",
        "TWIN_API_HASH",
        "TWIN_BOT_TOKEN",
        "TWIN_OWNER_ID",
        "TWIN_BOT_API_URL",
        "TWIN_SESSION_GAP",
        "TWIN_RETRAIN_EVERY",
    }
    assert documented <= names
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    missing = sorted(name for name in names if name not in readme)
    assert not missing, f"README does not document {missing}"


URL_PASSWORDS = ("dbquerypass1", "dbuserpass22", "openaipass333", "botpass4444")


def _urls_with_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "TWIN_DATABASE_URL",
        "postgresql+psycopg://twin:dbuserpass22@127.0.0.1:1/twin?password=dbquerypass1",
    )
    monkeypatch.setenv("TWIN_OPENAI_BASE_URL", "https://bob:openaipass333@llm.example/v1")
    monkeypatch.setenv("TWIN_BOT_API_URL", "https://carol:botpass4444@bot.example/bot")


def test_passwords_inside_urls_never_reach_config_errors_or_logs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from twin.cli import main

    _urls_with_passwords(monkeypatch)
    assert main(["config"]) == 0
    assert main(["-v", "db", "upgrade"]) == 1  # nothing listens on port 1: an error line and logs
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert "TWIN_OPENAI_BASE_URL" in shown and "error:" in captured.err
    assert not [word for word in URL_PASSWORDS if word in shown]
    listed = " ".join(value for _, value, _ in describe(load_settings()))
    assert "twin:***@127.0.0.1:1/twin?password=***" in listed
    assert not [word for word in URL_PASSWORDS if word in listed]


def test_url_passwords_are_secrets_the_log_filter_redacts(monkeypatch: pytest.MonkeyPatch) -> None:
    _urls_with_passwords(monkeypatch)
    settings = load_settings()
    assert set(URL_PASSWORDS) <= set(settings.secrets)
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "to %s", ("https://u:short@h",), None
    )
    SecretFilter(settings.secrets).filter(record)
    assert "short" not in record.getMessage()  # a URL's password is masked however short


def test_a_bad_value_is_not_echoed_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "TWIN_SESSION_GAP", "sk-live-abcdef123456"
    )  # a key pasted in the wrong place
    monkeypatch.setenv("TWIN_OWNER_ID", "sk-live-abcdef123456")
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert "TWIN_SESSION_GAP" in str(error.value) and "TWIN_OWNER_ID" in str(error.value)
    assert "sk-live" not in str(error.value) and "duration" in str(error.value)


def test_an_env_file_that_is_not_utf8_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from twin.cli import main

    (tmp_path / ".env").write_bytes(b"TWIN_OWNER_ID=1\nTWIN_DATA_DIR=/srv/\xe9t\xe9\n")
    assert main(["config"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and ".env" in err and "UTF-8" in err
