"""The one place that loads a base model, its tokenizer and an adapter (quantized or not).

The trainer, `twin eval`, `twin chat` and the bot all load through here, so a tiny test model
and a 7B hub model take exactly the same path.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.errors import ModelLoadError, problems_text

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

QUANT_CHOICES = ("auto", "4bit", "8bit", "none")
DTYPE_CHOICES = ("auto", "bfloat16", "float16", "float32")
ATTENTION_CHOICES = ("auto", "sdpa", "eager", "flash_attention_2")
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"}

# LoRA targets by architecture: every projection of attention and MLP (QLoRA paper, section 4).
LLAMA_FAMILY_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FALCON_TARGETS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
TARGETS_BY_MODEL_TYPE: dict[str, tuple[str, ...]] = {
    **{
        name: LLAMA_FAMILY_TARGETS
        for name in (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo2",
            "granite",
        )
    },
    "falcon": FALCON_TARGETS,
}
# Architectures whose flash-attention path reads packed sequences from `position_ids`.
FLASH_PACKING_MODEL_TYPES = frozenset(TARGETS_BY_MODEL_TYPE) - {"falcon"}


@dataclass(frozen=True)
class ModelOptions:
    """Which base model to load and how: quantization, dtype, LoRA targets, attention kernel."""

    base_model: str
    quant: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    target_modules: tuple[str, ...] | None = None
    attention: str = "auto"

    def problems(self) -> list[tuple[str, str]]:
        """Every invalid value as (field, message), so a caller can report them all at once."""
        found = []
        if not self.base_model:
            found.append(("base_model", "(empty): set TWIN_BASE_MODEL, a hub name or a folder"))
        if self.quant not in QUANT_CHOICES:
            found.append(("quant", f"{self.quant!r}: use one of {', '.join(QUANT_CHOICES)}"))
        if _DTYPE_ALIASES.get(self.dtype, self.dtype) not in DTYPE_CHOICES:
            found.append(("dtype", f"{self.dtype!r}: use one of {', '.join(DTYPE_CHOICES)}"))
        if self.attention not in ATTENTION_CHOICES:
            choices = ", ".join(ATTENTION_CHOICES)
            found.append(("attention", f"{self.attention!r}: use one of {choices}"))
        if self.target_modules is not None and not all(self.target_modules):
            found.append(("target_modules", "(empty name): give names separated by commas"))
        return found


def serving_options(
    base_model: str,
    trained_with: Mapping[str, Any],
    *,
    quant: str | None = None,
    dtype: str | None = None,
) -> ModelOptions:
    """How to load a trained run to generate (`twin eval`, `twin chat`, the bot): with the
    run's `trust_remote_code` and attention kernel, and its quant and dtype unless overridden.

    `trained_with` is the run's recorded training options (the `runs` table's `options`).
    """
    return ModelOptions(
        base_model=base_model,
        quant=quant or str(trained_with.get("quant") or "auto"),
        dtype=dtype or str(trained_with.get("dtype") or "auto"),
        trust_remote_code=bool(trained_with.get("trust_remote_code", False)),
        attention=str(trained_with.get("attention") or "auto"),
    )


@dataclass(frozen=True)
class LoraOptions:
    """The LoRA adapter's shape: rank, scaling (alpha) and dropout."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.rank < 1:
            found.append(("rank", f"{self.rank}: must be at least 1"))
        if self.alpha <= 0:
            found.append(("alpha", f"{self.alpha}: must be positive"))
        if not 0 <= self.dropout < 1:
            found.append(("dropout", f"{self.dropout}: must be in [0, 1)"))
        return found


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
        _raise_for_remote_code(name_or_path, error, trust_remote_code)
        raise ModelLoadError(
            f"cannot load the tokenizer of {name_or_path!r}: {error}. Set TWIN_BASE_MODEL "
            "(or --base-model) to a hub name you can download or a local folder"
        ) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def default_device() -> torch.device:
    """The first CUDA GPU if there is one, else the CPU."""
    import torch

    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else (torch.device("cpu"))
    )


def resolve_dtype(options: ModelOptions, device: torch.device | None = None) -> torch.dtype:
    """bf16 where the GPU supports it, else fp16 on a GPU, fp32 on a CPU; or what was asked."""
    import torch

    name = _DTYPE_ALIASES.get(options.dtype, options.dtype)
    if name != "auto":
        return getattr(torch, name)
    device = device or default_device()
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def resolve_quant(options: ModelOptions, device: torch.device | None = None) -> str:
    """`4bit` on CUDA and `none` on a CPU by default; refuse what this machine cannot do."""
    device = device or default_device()
    quant = options.quant
    if quant == "auto":
        quant = "4bit" if device.type == "cuda" else "none"
    if quant == "none":
        return quant
    if device.type != "cuda":
        raise ModelLoadError(
            f"--quant {quant} needs a CUDA GPU and this machine has none: "
            "pass --quant none to train or serve in full precision on the CPU"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(
            f"--quant {quant} needs bitsandbytes: pip install 'tgtwin[gpu]' "
            "(or pass --quant none if the model fits in GPU memory unquantized)"
        )
    return quant


def resolve_attention(options: ModelOptions, model_type: str, device: torch.device) -> str:
    """SDPA by default; FlashAttention-2 where installed and packed sequences are supported."""
    if options.attention != "auto":
        return options.attention
    if (
        device.type == "cuda"
        and model_type in FLASH_PACKING_MODEL_TYPES
        and importlib.util.find_spec("flash_attn") is not None
    ):
        return "flash_attention_2"
    return "sdpa"


def quantization_config(quant: str, compute_dtype: torch.dtype) -> Any:
    """bitsandbytes settings: QLoRA's nf4 with double quantization, or LLM.int8()."""
    from transformers import BitsAndBytesConfig

    if quant == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_base_model(
    options: ModelOptions, *, device: torch.device | None = None
) -> PreTrainedModel:
    """The base model, quantized and in the dtype the hardware and options call for."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    problems = options.problems()
    if problems:
        raise ModelLoadError(problems_text(problems))
    device = device or default_device()
    quant = resolve_quant(options, device)
    dtype = resolve_dtype(options, device)
    if quant == "4bit" and dtype == torch.float32:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        config = AutoConfig.from_pretrained(
            options.base_model, trust_remote_code=options.trust_remote_code
        )
        attention = resolve_attention(options, config.model_type, device)
        model = AutoModelForCausalLM.from_pretrained(
            options.base_model,
            dtype=dtype,
            quantization_config=quantization_config(quant, dtype),
            device_map={"": str(device)},
            trust_remote_code=options.trust_remote_code,
            attn_implementation=attention,
        )
    except (OSError, ValueError, ImportError) as error:
        _raise_for_remote_code(options.base_model, error, options.trust_remote_code)
        raise ModelLoadError(
            f"cannot load the base model {options.base_model!r}: {error}. Set TWIN_BASE_MODEL "
            "(or --base-model) to a hub name you can download or a local folder"
        ) from error
    model.config.use_cache = False
    logger.info(
        "loaded %s (%s, quant %s, attention %s) on %s",
        options.base_model,
        dtype,
        quant,
        attention,
        device,
    )
    return model


def target_modules_for(model: PreTrainedModel, options: ModelOptions) -> list[str] | str:
    """The LoRA targets: asked for, or the known projections of this architecture."""
    if options.target_modules:
        return list(options.target_modules)
    targets = TARGETS_BY_MODEL_TYPE.get(model.config.model_type)
    if targets is None:
        logger.warning(
            "no known LoRA targets for model type %r: adapting every linear layer "
            "(choose with --target-modules)",
            model.config.model_type,
        )
        return "all-linear"
    return list(targets)


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute activations in backward; non-reentrant, so frozen inputs need no grad hook."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers 5.17
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def load_for_training(
    options: ModelOptions,
    lora: LoraOptions,
    adapter_path: Path | None = None,
    *,
    device: torch.device | None = None,
    activation_checkpointing: bool = True,
) -> PeftModel:
    """A base model with a trainable LoRA adapter: a new one, or `adapter_path` to continue."""
    from peft import LoraConfig, PeftModel, get_peft_model

    problems = options.problems() + lora.problems()
    if problems:
        raise ModelLoadError(problems_text(problems))
    model = load_base_model(options, device=device)
    model.requires_grad_(False)
    if activation_checkpointing:
        enable_activation_checkpointing(model)
    if adapter_path is not None:
        _check_adapter(adapter_path)
        return PeftModel.from_pretrained(model, str(adapter_path), is_trainable=True)
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=target_modules_for(model, options),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise ModelLoadError(
            f"--target-modules {','.join(options.target_modules or ())!r} does not fit "
            f"{options.base_model!r} ({error}); its linear layers are: "
            f"{', '.join(linear_layer_names(model))}"
        ) from error


def load_for_inference(
    options: ModelOptions, adapter_path: Path | None, *, device: torch.device | None = None
) -> tuple[PreTrainedModel | PeftModel, PreTrainedTokenizerBase]:
    """Model and tokenizer ready to generate; the adapter (if any) frozen, named `default`."""
    from peft import PeftModel

    tokenizer = load_tokenizer(options.base_model, trust_remote_code=options.trust_remote_code)
    model = load_base_model(options, device=device)
    model.requires_grad_(False)
    if adapter_path is not None:
        _check_adapter(adapter_path)
        model = PeftModel.from_pretrained(model, str(adapter_path), is_trainable=False)
    model.eval()
    return model, tokenizer


def add_adapter(model: PeftModel, name: str, path: Path) -> None:
    """Load another adapter beside the loaded ones (frozen); `set_active_adapter` switches."""
    _check_adapter(path)
    if name in model.peft_config:
        raise ModelLoadError(f"an adapter named {name!r} is already loaded")
    model.load_adapter(str(path), adapter_name=name, is_trainable=False)


def set_active_adapter(model: PeftModel, name: str) -> None:
    """Serve with adapter `name` from the next forward pass on (kept frozen)."""
    if name not in model.peft_config:
        raise ModelLoadError(f"no adapter named {name!r} is loaded: {sorted(model.peft_config)}")
    model.set_adapter(name, inference_mode=True)


def remove_adapter(model: PeftModel, name: str) -> None:
    """Free an adapter that is no longer served; the active one cannot be removed."""
    if name == model.active_adapter:
        raise ModelLoadError(f"adapter {name!r} is active: switch to another one first")
    if name not in model.peft_config:
        raise ModelLoadError(f"no adapter named {name!r} is loaded: {sorted(model.peft_config)}")
    model.delete_adapter(name)


def linear_layer_names(model: Any) -> list[str]:
    """The distinct names of the linear layers, the values `--target-modules` accepts."""
    import torch

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) or type(module).__name__.startswith("Linear")
    }
    return sorted(names)


def _raise_for_remote_code(name: str, error: Exception, trusted: bool) -> None:
    """A model that needs its own code is refused until the user says to run it."""
    if not trusted and "trust_remote_code" in str(error):
        raise ModelLoadError(
            f"{name!r} needs its own Python code to load, and tgtwin does not run a model "
            "repository's code unless asked: read that code, then pass --trust-remote-code"
        ) from error


def _check_adapter(path: Path) -> None:
    if not (Path(path) / "adapter_config.json").is_file():
        raise ModelLoadError(
            f"{path} holds no LoRA adapter (adapter_config.json is missing): "
            "`twin runs` lists the runs that have one"
        )
