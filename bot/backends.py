"""Reply backends behind one small interface: transformers in process, or an OpenAI-style server.

Both render the history with `training.prompt`, so the model reads a conversation exactly as
it read it in training.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bot.errors import BackendError
from bot.options import Sampling
from training.prompt import ChatTurn, render_prompt

if TYPE_CHECKING:
    import httpx
    import torch

    from training.model import ModelOptions

logger = logging.getLogger(__name__)


class ReplyBackend(Protocol):
    """What the responder needs from a model: a reply, whole or as it is generated."""

    #: Shown by `/status`: which model and adapter serve.
    description: str

    def generate(self, turns: Sequence[ChatTurn], system: str | None, sampling: Sampling) -> str:
        """The owner's next turn after `turns` (which end on a user turn)."""
        ...

    def stream(
        self, turns: Sequence[ChatTurn], system: str | None, sampling: Sampling
    ) -> Iterator[str]:
        """The same reply, in pieces as they are generated."""
        ...

    def prompt_length(self, turns: Sequence[ChatTurn], system: str | None) -> int:
        """How many tokens the prompt for `turns` takes (memory keeps within a budget)."""
        ...

    def swap_adapter(self, path: Path, run_id: int) -> None:
        """Load run `run_id`'s adapter beside the served one and switch to it atomically."""
        ...

    def close(self) -> None: ...


def adapter_name(run_id: int) -> str:
    """The name a run's adapter has inside the model or at an OpenAI-compatible server."""
    return f"run-{run_id}"


# ---- local: transformers + peft in this process -------------------------------------------


@dataclass(eq=False)
class _Request:
    """One prompt waiting for its reply; the worker thread feeds `pieces`, then None."""

    prompt: list[int]
    sampling: Sampling
    pieces: queue.SimpleQueue[str | BaseException | None] = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)


class _BatchStreamer:
    """Hands each row's new tokens, decoded, to its request as `generate` produces them.

    A row is finished at its first end token (or when its reader went away), so one reply of
    a batch ends as soon as it is complete, not when the longest one is.
    """

    def __init__(self, tokenizer: Any, requests: list[_Request], stop_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.requests = requests
        self.stop_ids = stop_ids
        self.tokens: list[list[int]] = [[] for _ in requests]
        self.sent: list[int] = [0] * len(requests)
        self.finished: list[bool] = [request.cancelled.is_set() for request in requests]
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate first hands over the prompt itself
            self._prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.finished[row]:
                continue
            if self.requests[row].cancelled.is_set():
                self._finish(row)
            elif token in self.stop_ids:
                self._flush(row, final=True)
                self._finish(row)
            else:
                self.tokens[row].append(token)
                self._flush(row, final=False)

    def end(self) -> None:
        for row in range(len(self.requests)):
            if not self.finished[row]:
                self._flush(row, final=True)
                self._finish(row)

    def fail(self, error: BaseException) -> None:
        for row, request in enumerate(self.requests):
            if not self.finished[row]:
                request.pieces.put(error)
                self.finished[row] = True

    def _flush(self, row: int, final: bool) -> None:
        text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):  # half of a multi-byte character
            return
        if len(text) > self.sent[row]:
            self.requests[row].pieces.put(text[self.sent[row] :])
            self.sent[row] = len(text)

    def _finish(self, row: int) -> None:
        self.finished[row] = True
        self.requests[row].pieces.put(None)


def _rows_done_criteria(streamer: _BatchStreamer) -> Any:
    """A stopping criterion that ends rows the streamer has finished (a reader went away)."""
    import torch
    from transformers import StoppingCriteria

    class RowsDone(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> Any:
            return torch.tensor(streamer.finished, dtype=torch.bool, device=input_ids.device)

    return RowsDone()


class LocalBackend:
    """transformers + peft in this process, with a micro-batcher.

    One worker thread owns the model: requests arriving within `batch_window` seconds of each
    other (up to `max_batch`) with the same sampling settings share one left-padded `generate`.
    The same lock guards generation and adapter switches, so a switch never lands mid-reply.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        run_id: int | None = None,
        max_batch: int = 8,
        batch_window: float = 0.01,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.run_id = run_id
        self.max_batch = max(1, max_batch)
        self.batch_window = batch_window
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._model_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._closed = False
        self.stop_ids = _stop_token_ids(model, tokenizer)
        name = getattr(getattr(model, "config", None), "name_or_path", "") or "model"
        self.base_model = str(name)

    @classmethod
    def load(
        cls,
        options: ModelOptions,
        adapter_path: Path | None,
        *,
        run_id: int | None = None,
        max_batch: int = 8,
        batch_window: float = 0.01,
    ) -> LocalBackend:
        """Load the base model and the run's adapter through `training.model`."""
        from training.model import load_for_inference

        model, tokenizer = load_for_inference(options, adapter_path)
        backend = cls(
            model, tokenizer, run_id=run_id, max_batch=max_batch, batch_window=batch_window
        )
        backend.base_model = options.base_model
        return backend

    @property
    def description(self) -> str:
        adapter = adapter_name(self.run_id) if self.run_id is not None else "no adapter"
        return f"local: {self.base_model} + {adapter}"

    def prompt_tokens(self, turns: Sequence[ChatTurn], system: str | None) -> list[int]:
        return list(render_prompt(list(turns), self.tokenizer, system=system))

    def prompt_length(self, turns: Sequence[ChatTurn], system: str | None) -> int:
        return len(self.prompt_tokens(turns, system))

    def generate(self, turns: Sequence[ChatTurn], system: str | None, sampling: Sampling) -> str:
        return "".join(self.stream(turns, system, sampling))

    def stream(
        self, turns: Sequence[ChatTurn], system: str | None, sampling: Sampling
    ) -> Iterator[str]:
        request = _Request(self.prompt_tokens(turns, system), sampling)
        return self._pieces(self.submit(request))

    def submit(self, request: _Request) -> _Request:
        """Queue a request for the worker thread (started on first use)."""
        if self._closed:
            raise BackendError("the local backend is closed")
        with self._start_lock:
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._serve, name="twin-generate", daemon=True
                )
                self._worker.start()
        self._requests.put(request)
        return request

    def swap_adapter(self, path: Path, run_id: int) -> None:
        from training.model import add_adapter, remove_adapter, set_active_adapter

        name = adapter_name(run_id)
        with self._model_lock:
            old = self.model.active_adapter
            if name == old:
                return
            try:
                add_adapter(self.model, name, Path(path))
                set_active_adapter(self.model, name)
            except Exception as error:
                if name in self.model.peft_config and name != self.model.active_adapter:
                    remove_adapter(self.model, name)
                raise BackendError(f"cannot load the adapter of run {run_id}: {error}") from error
            remove_adapter(self.model, old)
            self.run_id = run_id
        logger.info("now serving adapter %s (was %s)", name, old)

    def close(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._requests.put(None)
            self._worker.join(timeout=30)

    # -- the worker thread --

    def _pieces(self, request: _Request) -> Iterator[str]:
        try:
            while (piece := request.pieces.get()) is not None:
                if isinstance(piece, BaseException):
                    raise BackendError(f"generation failed: {piece}") from piece
                yield piece
        finally:
            request.cancelled.set()

    def _serve(self) -> None:
        waiting: deque[_Request] = deque()
        while True:
            if not waiting:
                first = self._requests.get()
                if first is None:
                    return
                waiting.append(first)
            if not self._gather(waiting):
                self._fail_all(waiting, BackendError("the local backend is closed"))
                return
            batch = self._take_batch(waiting)
            if batch:
                self._run_batch(batch)

    def _gather(self, waiting: deque[_Request]) -> bool:
        """Collect what arrives within the batch window; False when the backend closes."""
        deadline = time.monotonic() + self.batch_window
        while len(waiting) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                request = (
                    self._requests.get(timeout=left) if left > 0 else self._requests.get_nowait()
                )
            except queue.Empty:
                return True
            if request is None:
                return False
            waiting.append(request)
        return True

    def _take_batch(self, waiting: deque[_Request]) -> list[_Request]:
        """The oldest request and those waiting with the same sampling settings, in order."""
        while waiting and waiting[0].cancelled.is_set():
            waiting.popleft().pieces.put(None)
        if not waiting:
            return []
        sampling = waiting[0].sampling
        batch = [request for request in waiting if request.sampling == sampling]
        batch = batch[: self.max_batch]
        for request in batch:
            waiting.remove(request)
        return batch

    def _fail_all(self, requests: Sequence[_Request], error: BaseException) -> None:
        for request in requests:
            request.pieces.put(error)

    def _run_batch(self, batch: list[_Request]) -> None:
        streamer = _BatchStreamer(self.tokenizer, batch, self.stop_ids)
        try:
            with self._model_lock:
                self._generate(batch, streamer)
            streamer.end()
        except Exception as error:
            logger.exception("generation failed for a batch of %d", len(batch))
            streamer.fail(error)

    def _generate(self, batch: list[_Request], streamer: _BatchStreamer) -> None:
        import torch
        from transformers import StoppingCriteriaList

        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = next(iter(self.stop_ids))
        width = max(len(request.prompt) for request in batch)
        ids = [[pad] * (width - len(r.prompt)) + r.prompt for r in batch]
        mask = [[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in batch]
        device = _input_device(self.model)
        sampling = batch[0].sampling
        with torch.inference_mode():
            self.model.generate(
                input_ids=torch.tensor(ids, device=device),
                attention_mask=torch.tensor(mask, device=device),
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_rows_done_criteria(streamer)]),
                pad_token_id=pad,
                eos_token_id=sorted(self.stop_ids),
                use_cache=True,
                **generation_kwargs(sampling),
            )


def generation_kwargs(sampling: Sampling) -> dict[str, Any]:
    """`generate` arguments for `sampling`: greedy at temperature 0, else nucleus sampling."""
    if sampling.temperature <= 0:
        return {"do_sample": False, "max_new_tokens": sampling.max_new_tokens}
    return {
        "do_sample": True,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": 0,
        "max_new_tokens": sampling.max_new_tokens,
    }


def _stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """The end-of-turn tokens: the tokenizer's EOS and any the generation config names."""
    found: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, configured):
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, list | tuple):
            found.update(int(item) for item in value)
    if not found:
        raise BackendError("the tokenizer has no end-of-sequence token: replies would never end")
    return found


def _input_device(model: Any) -> Any:
    """Where input ids go: the embedding's device (models split across devices too)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return model.device


# ---- OpenAI-compatible server (vLLM, llama.cpp server, ...) ------------------------------


class OpenAIBackend:
    """Any OpenAI-compatible endpoint, e.g. vLLM serving the base model with the LoRA adapter.

    With the base model's tokenizer it sends `/completions` the exact token ids of the training
    prompt; without one it sends `/chat/completions` the turns and lets the server template
    them. `model` is the adapter's name at the server (vLLM: `--lora-modules NAME=PATH`).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        tokenizer: Any = None,
        timeout: float = 120.0,
        client: httpx.Client | None = None,
    ) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.tokenizer = tokenizer
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.Client(timeout=timeout, headers=headers)

    @property
    def description(self) -> str:
        mode = "token ids" if self.tokenizer is not None else "chat messages"
        return f"openai: {self.model} at {self.base_url} ({mode})"

    def prompt_length(self, turns: Sequence[ChatTurn], system: str | None) -> int:
        if self.tokenizer is not None:
            return len(render_prompt(list(turns), self.tokenizer, system=system))
        # No tokenizer: about three characters a token in most languages.
        characters = sum(len(turn.content) + 8 for turn in turns) + len(system or "")
        return characters // 3 + 1

    def generate(self, turns: Sequence[ChatTurn], system: str | None, sampling: Sampling) -> str:
        path, body = self._request(turns, system, sampling, stream=False)
        response = self._post(path, body)
        try:
            choice = response.json()["choices"][0]
            return choice["text"] if "text" in choice else choice["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise BackendError(
                f"{self.base_url}{path} gave an unexpected answer: {error}"
            ) from error

    def stream(
        self, turns: Sequence[ChatTurn], system: str | None, sampling: Sampling
    ) -> Iterator[str]:
        import httpx

        path, body = self._request(turns, system, sampling, stream=True)
        try:
            with self._client.stream("POST", self.base_url + path, json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise BackendError(self._status_error(path, response))
                for line in response.iter_lines():
                    if piece := _sse_piece(line):
                        yield piece
        except httpx.HTTPError as error:
            raise BackendError(f"cannot reach {self.base_url}{path}: {error}") from error

    def swap_adapter(self, path: Path, run_id: int) -> None:
        """Ask the server to load the new adapter (vLLM's runtime LoRA loading), then use it."""
        name = adapter_name(run_id)
        self._post("/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        old, self.model = self.model, name
        logger.info("now asking %s for adapter %s (was %s)", self.base_url, name, old)

    def close(self) -> None:
        self._client.close()

    def _request(
        self, turns: Sequence[ChatTurn], system: str | None, sampling: Sampling, stream: bool
    ) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.model,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
            "stream": stream,
        }
        if self.tokenizer is not None:
            body["prompt"] = render_prompt(list(turns), self.tokenizer, system=system)
            return "/completions", body
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": turn.role, "content": turn.content} for turn in turns]
        body["messages"] = messages
        return "/chat/completions", body

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
    if "text" in choice:
        return choice["text"] or ""
    return (choice.get("delta") or {}).get("content") or ""
