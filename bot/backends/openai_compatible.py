"""Any OpenAI-compatible endpoint (vLLM with LoRA adapters, llama.cpp server, ...).

The prompt is rendered here with `training.prompt`, exactly as in training, and sent to
`/completions` as token ids: the server never applies a chat template of its own, so a
vLLM-served twin reads the same text it was trained on and stops at the same tokens.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.backends.base import adapter_name
from bot.errors import BackendError
from training.generation import GenerationError, Sampling, stop_token_ids
from training.prompt import Turn, render_prompt

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

COMPLETIONS = "/completions"


class OpenAIBackend:
    """`/completions` of an OpenAI-compatible server, fed the training prompt's token ids.

    `tokenizer` is the base model's (the one training rendered with); `model` is the
    adapter's name at the server (vLLM: `--lora-modules NAME=PATH`).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        tokenizer: Any,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        client: httpx.Client | None = None,
        run_id: int | None = None,
    ) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.tokenizer = tokenizer
        self.run_id = run_id
        try:
            self.stop_ids = sorted(stop_token_ids(None, tokenizer))
        except GenerationError as error:
            raise BackendError(str(error)) from error
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.Client(timeout=timeout, headers=headers)

    @property
    def description(self) -> str:
        return f"openai: {self.model} at {self.base_url}"

    def prompt(self, turns: Sequence[Turn], system: str | None) -> list[int]:
        """The token ids training renders for `turns`, ending on the owner's turn prefix."""
        return render_prompt(list(turns), self.tokenizer, system=system)

    def prompt_length(self, turns: Sequence[Turn], system: str | None) -> int:
        return len(self.prompt(turns, system))

    def generate(self, turns: Sequence[Turn], system: str | None, sampling: Sampling) -> str:
        body = self._body(turns, system, sampling, stream=False)
        response = self._post(COMPLETIONS, body)
        try:
            return response.json()["choices"][0]["text"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise BackendError(
                f"{self.base_url}{COMPLETIONS} gave an unexpected answer: {error}"
            ) from error

    def stream(
        self, turns: Sequence[Turn], system: str | None, sampling: Sampling
    ) -> Iterator[str]:
        import httpx

        body = self._body(turns, system, sampling, stream=True)
        url = self.base_url + COMPLETIONS
        try:
            with self._client.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise BackendError(self._status_error(COMPLETIONS, response))
                for line in response.iter_lines():
                    if piece := _sse_piece(line):
                        yield piece
        except httpx.HTTPError as error:
            raise BackendError(f"cannot reach {url}: {error}") from error

    def swap_adapter(self, path: Path, run_id: int) -> None:
        """Ask the server to load the new adapter (vLLM's runtime LoRA loading), then use it."""
        name = adapter_name(run_id)
        self._post("/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        old, self.model, self.run_id = self.model, name, run_id
        logger.info("now asking %s for adapter %s (was %s)", self.base_url, name, old)

    def close(self) -> None:
        self._client.close()

    def _body(
        self, turns: Sequence[Turn], system: str | None, sampling: Sampling, stream: bool
    ) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt": self.prompt(turns, system),
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
            # vLLM's extension: stop where the local backend and `twin eval` stop.
            "stop_token_ids": self.stop_ids,
            "stream": stream,
        }

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        import httpx

        try:
            response = self._client.post(self.base_url + path, json=body)
        except httpx.HTTPError as error:
            raise BackendError(f"cannot reach {self.base_url}{path}: {error}") from error
        if response.status_code != 200:
            raise BackendError(self._status_error(path, response))
        return response

    def _status_error(self, path: str, response: httpx.Response) -> str:
        return f"{self.base_url}{path} answered {response.status_code}: {response.text[:200]}"


def _sse_piece(line: str) -> str:
    """The text in one server-sent-events line of a streamed completion ('' for none)."""
    if not line.startswith("data:"):
        return ""
    payload = line[5:].strip()
    if not payload or payload == "[DONE]":
        return ""
    try:
        choice = json.loads(payload)["choices"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return ""
    return choice.get("text") or ""
