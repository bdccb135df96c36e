"""The one Settings object: `TWIN_*` environment variables, then a `.env` file, then defaults."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.database import mask_url_credentials
from twin.durations import format_duration, parse_duration

ENV_PREFIX = "TWIN_"
DEFAULT_BASE_MODEL = "mistralai/Mistral-7B-Instruct-v0.3"
TELEGRAM_BOT_API_URL = "https://api.telegram.org/bot"


class SettingsError(Exception):
    """A setting has a bad value; the message names the variable."""


class Settings(BaseSettings):
    """Everything tgtwin reads from the environment, read once at the CLI and passed down."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    data_dir: Path = Field(Path("./twin-data"), description="datasets, adapters, sessions")
    database_url: str | None = Field(None, description="any SQLAlchemy URL")
    base_model: str = Field(DEFAULT_BASE_MODEL, description="hub name or local path")
    api_id: int | None = Field(None, description="Telegram API id (my.telegram.org)")
    api_hash: SecretStr | None = Field(None, description="Telegram API hash")
    bot_token: SecretStr | None = Field(None, description="the bot's token from BotFather")
    owner_id: int | None = Field(None, description="the owner's Telegram user id")
    bot_api_url: str = Field(TELEGRAM_BOT_API_URL, description="Bot API server")
    session_gap: timedelta = Field(timedelta(days=1), description="gap that starts a new chat")
    retrain_every: timedelta | None = Field(None, description="scheduled retrain, off if empty")
    dataset_workers: int | None = Field(
        None, ge=1, description="processes of a big dataset build; one per core if empty"
    )
    dpo_min_pairs: int = Field(
        20,
        ge=0,
        description="new feedback (pairs, judged replies) that makes /retrain preference-tune (0: never)",
    )
    gate_margin: float = Field(
        0.0, ge=0, description="how much worse a retrained run may be and still serve"
    )
    bot_backend: Literal["local", "openai"] = Field("local", description="reply backend")
    openai_base_url: str | None = Field(None, description="OpenAI-compatible endpoint")
    openai_api_key: SecretStr | None = Field(None, description="key for that endpoint")
    openai_model: str | None = Field(None, description="model name at that endpoint")

    @field_validator("session_gap", "retrain_every", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_duration(value) if value.strip() else None
        return value

    @field_validator(
        "database_url", "openai_base_url", "openai_model", "dataset_workers", mode="before"
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'twin.db'}"

    @property
    def secrets(self) -> list[str]:
        """Secret values set, so logging can redact them wherever they appear: the tokens and
        keys, and passwords written inside the URLs."""
        values = [self.api_hash, self.bot_token, self.openai_api_key]
        found = [value.get_secret_value() for value in values if value and value.get_secret_value()]
        for url in (self.database_url, self.openai_base_url, self.bot_api_url):
            found.extend(_url_passwords(url or ""))
        return found


def _url_passwords(url: str) -> list[str]:
    """The password of `user:password@`, and the values of `?password=`-like parameters."""
    parts = urlsplit(url)
    try:
        found = [parts.password] if parts.password else []
    except ValueError:  # a port that is no number: no password to find either
        found = []
    for name, value in parse_qsl(parts.query):
        if value and mask_url_credentials(f"?{name}=x") != f"?{name}=x":
            found.append(value)
    return [unquote(value) for value in found]


def load_settings(env_file: Path | None = None, **overrides: Any) -> Settings:
    """Read settings; raise SettingsError naming every bad variable at once."""
    path = env_file if env_file is not None else Path(".env")
    try:
        settings = Settings(_env_file=path if path.exists() else None)  # type: ignore[call-arg]
    except ValidationError as error:
        problems = [
            f"{ENV_PREFIX}{'.'.join(str(p) for p in item['loc']).upper()}: {_unechoed(item)}"
            for item in error.errors()
        ]
        raise SettingsError("bad settings: " + "; ".join(problems)) from None
    except UnicodeDecodeError as error:
        raise SettingsError(
            f"{path} is not UTF-8 text (byte {error.start}): save it as UTF-8"
        ) from None
    values = {key: value for key, value in overrides.items() if value is not None}
    return settings.model_copy(update=values) if values else settings


def _unechoed(item: Any) -> str:
    """Pydantic's complaint without the value itself: it may be a secret in the wrong place."""
    message = str(item["msg"])
    value = item.get("input")
    if isinstance(value, str) and value:
        message = message.replace(repr(value), "the value").replace(value, "the value")
    return message


def describe(settings: Settings, env_file: Path | None = None) -> list[tuple[str, str, str]]:
    """(variable, shown value, source) for every setting; secrets masked."""
    path = env_file if env_file is not None else Path(".env")
    from_file = dotenv_values(path, encoding="utf-8") if path.exists() else {}
    rows = []
    for name in Settings.model_fields:
        variable = f"{ENV_PREFIX}{name.upper()}"
        value = getattr(settings, name)
        if variable in os.environ:
            source = "environment"
        elif variable in from_file:
            source = str(path)
        else:
            source = "default"
        if name == "database_url" and value is None:
            value = settings.resolved_database_url
        rows.append((variable, _show(value), source))
    return rows


def _show(value: Any) -> str:
    if isinstance(value, SecretStr):
        return "**********" if value.get_secret_value() else "(empty)"
    if value is None:
        return "(not set)"
    if isinstance(value, timedelta):
        return format_duration(value)
    return mask_url_credentials(str(value))
