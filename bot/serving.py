"""What `twin bot` and `twin chat` serve: the active run, through the chosen reply backend."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bot.backends import LocalBackend, OpenAIBackend, ReplyBackend, adapter_name
from bot.errors import BotError
from bot.options import BotOptions
from storage import Database
from storage.runs import active_run
from training.options import from_setting, option

logger = logging.getLogger(__name__)

NO_ACTIVE_RUN = (
    "no trained run is active: train one with `twin train` (after `twin import` or "
    "`twin harvest`, and `twin dataset build`), or pick one with `twin runs activate RUN`"
)


@dataclass(frozen=True)
class ServedRun:
    """The active run: its id, base model, adapter folder and the options it trained with."""

    id: int
    base_model: str
    adapter_path: Path
    trained_with: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendOptions:
    """Which backend answers and how it loads the model; built by the CLI from settings and
    the `--quant` flag of `twin bot` and `twin chat`."""

    kind: Literal["local", "openai"] = from_setting("bot_backend", "local")
    quant: str = option(
        "auto", "4bit, 8bit or none; auto: as the run trained (4bit on a GPU, none on a CPU)."
    )
    dtype: str = "auto"
    #: Replies the local backend generates in one batch: `twin bot --workers` sets it.
    max_batch: int = BotOptions.workers
    openai_base_url: str | None = from_setting("openai_base_url", None)
    openai_model: str | None = from_setting("openai_model", None)
    openai_api_key: str | None = from_setting("openai_api_key", None, repr=False)

    def problems(self) -> list[tuple[str, str]]:
        """Every bad value as (field, message); the CLI names the flag or setting to change."""
        found = []
        if self.kind not in ("local", "openai"):
            found.append(("kind", f"{self.kind!r}: use local or openai"))
        if self.kind == "openai" and not self.openai_base_url:
            found.append(
                (
                    "openai_base_url",
                    "is not set: the OpenAI-compatible server's URL, e.g. http://127.0.0.1:8000/v1",
                )
            )
        if self.max_batch < 1:
            found.append(("max_batch", f"{self.max_batch}: must be at least 1"))
        return found


def served_run(database: Database) -> ServedRun:
    """The active run, or a BotError saying which command makes one."""
    with database.session() as session:
        run = active_run(session)
        if run is None or not run.adapter_path:
            raise BotError(NO_ACTIVE_RUN)
        served = ServedRun(run.id, run.base_model, Path(run.adapter_path), dict(run.options or {}))
    if not served.adapter_path.is_dir():
        raise BotError(
            f"the adapter of the active run {served.id} is missing ({served.adapter_path}): "
            "retrain with `twin train` or activate another run with `twin runs activate RUN`"
        )
    return served


def open_backend(options: BackendOptions, run: ServedRun) -> ReplyBackend:
    """Load the run's model and adapter in process, or connect to the OpenAI-style server.

    Both load through `training.model.serving_options`, as `twin eval` does: the run's
    `trust_remote_code` and attention kernel, its quant and dtype unless overridden.
    """
    from training.errors import problems_text
    from training.model import ModelLoadError, load_tokenizer, serving_options

    if problems := options.problems():
        raise BotError(problems_text(problems))
    model = serving_options(
        run.base_model,
        run.trained_with,
        quant=None if options.quant == "auto" else options.quant,
        dtype=None if options.dtype == "auto" else options.dtype,
    )
    if problems := model.problems():
        raise BotError(problems_text(problems))
    if options.kind == "openai":
        assert options.openai_base_url is not None  # noqa: S101 - checked in problems()
        # The trainer saves the tokenizer it rendered with beside the adapter: the exact one.
        source = run.adapter_path
        if not (source / "tokenizer_config.json").is_file():
            source = Path(run.base_model)
        try:
            tokenizer = load_tokenizer(str(source), trust_remote_code=model.trust_remote_code)
        except ModelLoadError as error:
            raise BotError(
                f"the OpenAI-compatible backend renders the training prompt itself and needs "
                f"the tokenizer of {run.base_model}: {error}"
            ) from None
        return OpenAIBackend(
            options.openai_base_url,
            options.openai_model or adapter_name(run.id),
            tokenizer,
            api_key=options.openai_api_key,
            run_id=run.id,
        )
    logger.info("loading %s with the adapter of run %s", run.base_model, run.id)
    return LocalBackend.load(model, run.adapter_path, run_id=run.id, max_batch=options.max_batch)
