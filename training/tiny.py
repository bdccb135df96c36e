"""Tiny models and tokenizers built on the spot: for tests, the demo and CPU benchmarks.

They are saved with `save_pretrained` and loaded back through `training.model` exactly like a
real model, so nothing ever comes from a model hub.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

Architecture = Literal["mistral", "falcon"]

# Mistral 7B Instruct v0.1's template: no system role, roles must alternate starting with user.
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]"]


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 512,
    chat_template: str | None = MISTRAL_CHAT_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts` (any language, emoji included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        chat_template=chat_template,
    )


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    path: Path,
    architecture: Architecture = "mistral",
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    max_positions: int = 1024,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised model of `architecture` and its tokenizer under `path`."""
    import torch
    from transformers import FalconConfig, FalconForCausalLM, MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    if architecture == "mistral":
        config = MistralConfig(
            **common,
            intermediate_size=hidden_size * 2,
            num_key_value_heads=2,
            max_position_embeddings=max_positions,
        )
        model = MistralForCausalLM(config)
    elif architecture == "falcon":
        config = FalconConfig(
            **common,
            new_decoder_architecture=False,
            multi_query=True,
            parallel_attn=True,
            bias=False,
            max_position_embeddings=max_positions,
        )
        model = FalconForCausalLM(config)
    else:
        raise ValueError(f"unknown architecture {architecture!r}: use mistral or falcon")
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
