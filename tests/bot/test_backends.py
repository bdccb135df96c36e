"""Reply backends: the local one against plain `generate`, batching, streaming, adapter swaps;
the OpenAI-compatible one against a fake server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bot.backends import LocalBackend, OpenAIBackend
from bot.errors import BackendError
from training.generation import Sampling
from training.prompt import Turn, render_prompt

GREEDY = Sampling(temperature=0.0, max_new_tokens=12)
CHATS = [
    [Turn("user", "hi, how are you?")],
    [Turn("user", "привет"), Turn("assistant", "ok 👍"), Turn("user", "coffee?")],
    [Turn("user", "see you tomorrow at the station, right?")],
    [Turn("user", "ok")],
]


@pytest.fixture
def local(tiny_model: Path, tiny_adapters: tuple[Path, Path]) -> Iterator[LocalBackend]:
    from training.model import ModelOptions

    backend = LocalBackend.load(
        ModelOptions(str(tiny_model), quant="none"), tiny_adapters[0], run_id=1
    )
    yield backend
    backend.close()


def plain_generate(model: Any, tokenizer: Any, turns: list[Turn], max_new: int) -> str:
    """What `model.generate` says, greedy, for one prompt: the reference."""
    import torch

    prompt = render_prompt(turns, tokenizer)
    with torch.inference_mode():
        output = model.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_new,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(output[0, len(prompt) :], skip_special_tokens=True)


def test_local_replies_equal_plain_generate(local: LocalBackend) -> None:
    for turns in CHATS:
        expected = plain_generate(local.model, local.tokenizer, turns, GREEDY.max_new_tokens)
        assert local.generate(turns, None, GREEDY) == expected


def test_streamed_pieces_make_the_same_reply(local: LocalBackend) -> None:
    pieces = list(local.stream(CHATS[1], None, GREEDY))
    assert len(pieces) > 1
    assert "".join(pieces) == local.generate(CHATS[1], None, GREEDY)


def test_concurrent_requests_are_batched_with_the_same_results(local: LocalBackend) -> None:
    expected = [local.generate(turns, None, GREEDY) for turns in CHATS]
    local.batch_window = 0.2
    sizes: list[int] = []
    original = local._generate

    def counting(batch, streamer):
        sizes.append(len(batch))
        original(batch, streamer)

    local._generate = counting  # type: ignore[method-assign]
    results: dict[int, str] = {}
    threads = [
        threading.Thread(
            target=lambda k=k: results.__setitem__(k, local.generate(CHATS[k], None, GREEDY))
        )
        for k in range(len(CHATS))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [results[k] for k in range(len(CHATS))] == expected
    assert max(sizes) > 1


def test_swapping_adapters_changes_the_model_atomically(
    local: LocalBackend, tiny_model: Path, tiny_adapters: tuple[Path, Path]
) -> None:
    from training.model import ModelOptions, load_for_inference

    before = local.generate(CHATS[0], None, GREEDY)
    local.swap_adapter(tiny_adapters[1], run_id=2)
    after = local.generate(CHATS[0], None, GREEDY)
    model_b, tokenizer = load_for_inference(
        ModelOptions(str(tiny_model), quant="none"), tiny_adapters[1]
    )
    assert after == plain_generate(model_b, tokenizer, CHATS[0], GREEDY.max_new_tokens)
    assert after != before
    assert set(local.model.peft_config) == {"run-2"} and local.run_id == 2
    assert "run-2" in local.description


def test_a_broken_adapter_keeps_the_old_one(local: LocalBackend, tmp_path: Path) -> None:
    before = local.generate(CHATS[0], None, GREEDY)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(BackendError, match="run 5"):
        local.swap_adapter(tmp_path, run_id=5)
    assert local.generate(CHATS[0], None, GREEDY) == before
    assert set(local.model.peft_config) == {"default"}


def test_a_generation_error_reaches_the_caller_and_the_backend_recovers(
    local: LocalBackend,
) -> None:
    before = local.generate(CHATS[0], None, GREEDY)
    original = local._generate

    def broken(batch, streamer):
        raise RuntimeError("device lost")

    local._generate = broken  # type: ignore[method-assign]
    with pytest.raises(BackendError, match="device lost"):
        local.generate(CHATS[0], None, GREEDY)
    local._generate = original  # type: ignore[method-assign]
    assert before and local.generate(CHATS[0], None, GREEDY) == before


def test_sampling_settings_reach_generate(local: LocalBackend, monkeypatch) -> None:
    seen: list[dict[str, Any]] = []
    generate = local.model.generate

    def recording(**kwargs: Any) -> Any:
        seen.append(kwargs)
        return generate(**kwargs)

    monkeypatch.setattr(local.model, "generate", recording)
    local.generate(CHATS[0], None, Sampling(temperature=1.5, top_p=0.5, max_new_tokens=3))
    local.generate(CHATS[0], None, GREEDY)
    assert seen[0]["do_sample"] and seen[0]["temperature"] == 1.5 and seen[0]["top_p"] == 0.5
    assert seen[0]["max_new_tokens"] == 3
    assert not seen[1]["do_sample"] and "temperature" not in seen[1]


# ---- OpenAI-compatible -----------------------------------------------------------------------


class FakeOpenAI:
    """Answers /v1/completions (plain and streamed) and /v1/load_lora_adapter, as vLLM does;
    a prompt must be token ids or text, as the OpenAI completions API takes it."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any], str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append((self.path, body, self.headers.get("Authorization", "")))
                if self.path == "/v1/load_lora_adapter":
                    ok = Path(body["lora_path"]).exists()
                    self._send(200 if ok else 400, b"ok" if ok else b"no such adapter")
                    return
                prompt = body.get("prompt")
                valid = isinstance(prompt, str) or (
                    isinstance(prompt, list) and all(isinstance(i, int) for i in prompt)
                )
                if self.path != "/v1/completions" or not valid:
                    self._send(404 if valid else 400, b"not found")
                    return
                words = ["hello", " from", " the", " server"]
                if not body.get("stream"):
                    choice = {"text": "".join(words)}
                    self._send(200, json.dumps({"choices": [choice]}).encode())
                    return
                lines = []
                for word in words:
                    lines.append(f"data: {json.dumps({'choices': [{'text': word}]})}\n\n")
                lines.append("data: [DONE]\n\n")
                self._send(200, "".join(lines).encode(), "text/event-stream")

            def _send(self, status: int, payload: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI()
    yield server
    server.stop()


@pytest.fixture
def tokenizer(tiny_model: Path) -> Any:
    from training.model import load_tokenizer

    return load_tokenizer(str(tiny_model))


def test_openai_sends_the_training_prompt_to_completions_and_reads_the_reply(
    fake_openai: FakeOpenAI, tokenizer: Any
) -> None:
    from training.generation import stop_token_ids

    backend = OpenAIBackend(fake_openai.url, "twin", tokenizer, api_key="sk-local-test")
    sampling = Sampling(temperature=0.5, top_p=0.8, max_new_tokens=20)
    assert backend.generate(CHATS[1], "You are Ann.", sampling) == "hello from the server"
    assert "".join(backend.stream(CHATS[0], None, sampling)) == "hello from the server"
    (path, body, auth), (streamed_path, streamed, _) = fake_openai.requests
    assert path == streamed_path == "/v1/completions" and auth == "Bearer sk-local-test"
    assert body["model"] == "twin" and body["max_tokens"] == 20 and body["temperature"] == 0.5
    assert body["top_p"] == 0.8 and not body["stream"] and streamed["stream"]
    assert body["prompt"] == render_prompt(CHATS[1], tokenizer, system="You are Ann.")
    assert streamed["prompt"] == render_prompt(CHATS[0], tokenizer)
    assert body["stop_token_ids"] == sorted(stop_token_ids(None, tokenizer))
    assert backend.prompt_length(CHATS[0], None) == len(streamed["prompt"])
    backend.close()


def test_openai_swap_loads_the_adapter_at_the_server(
    fake_openai: FakeOpenAI, tmp_path: Path, tokenizer: Any
) -> None:
    backend = OpenAIBackend(fake_openai.url, "twin", tokenizer)
    backend.swap_adapter(tmp_path, run_id=7)
    assert backend.model == "run-7"
    with pytest.raises(BackendError, match="400"):
        backend.swap_adapter(tmp_path / "missing", run_id=8)
    assert backend.model == "run-7"
    backend.generate(CHATS[0], None, GREEDY)
    assert fake_openai.requests[-1][1]["model"] == "run-7"


def test_an_unreachable_server_is_a_backend_error(tokenizer: Any) -> None:
    backend = OpenAIBackend("http://127.0.0.1:9/v1", "twin", tokenizer, timeout=2)
    with pytest.raises(BackendError, match="cannot reach"):
        backend.generate(CHATS[0], None, GREEDY)
    with pytest.raises(BackendError, match="cannot reach"):
        list(backend.stream(CHATS[0], None, GREEDY))
