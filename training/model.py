"""The one place that loads a base model, its tokenizer and an adapter (quantized or not).

The trainer, `twin eval`, `twin chat` and the bot all load through here, so a tiny test model
and a 7B hub model take exactly the same path.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from training.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def load_tokenizer(
    name_or_path: str, *, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """The base model's tokenizer, with a pad token (models like Mistral ship none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(name_or_path), trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"cannot load the tokenizer of {name_or_path!r}: {error}. Set TWIN_BASE_MODEL "
            "(or --base-model) to a hub name you can download or a local folder"
        ) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
