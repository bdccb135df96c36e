"""Model loading through `training.model`: dtype, quantization, LoRA targets, adapter switching."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from training.errors import ModelLoadError
from training.model import (
    FALCON_TARGETS,
    LLAMA_FAMILY_TARGETS,
    LoraOptions,
    ModelOptions,
    add_adapter,
    load_base_model,
    load_for_inference,
    load_for_training,
    remove_adapter,
    resolve_dtype,
    resolve_quant,
    set_active_adapter,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from training.tiny import train_tokenizer

    return train_tokenizer(["hi there, how are you?", "good, and you? 🙂"] * 10, 300)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> dict[str, Path]:
    from training.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("models")
    return {arch: build_tiny_model(tokenizer, root / arch, arch) for arch in ("mistral", "falcon")}


def lora_target_names(model: Any) -> set[str]:
    return {
        name.split(".lora_A")[0].rsplit(".", 1)[-1]
        for name, _ in model.named_parameters()
        if ".lora_A." in name
    }


def test_cpu_defaults_are_full_precision_and_unquantized(model_dirs: dict[str, Path]) -> None:
    model = load_base_model(ModelOptions(str(model_dirs["mistral"])))

    assert next(model.parameters()).dtype == torch.float32
    assert not getattr(model, "is_loaded_in_4bit", False)
    assert model.config._attn_implementation == "sdpa"


def test_dtype_can_be_chosen(model_dirs: dict[str, Path]) -> None:
    model = load_base_model(ModelOptions(str(model_dirs["falcon"]), dtype="bf16"))

    assert next(model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("architecture", "targets"), [("mistral", LLAMA_FAMILY_TARGETS), ("falcon", FALCON_TARGETS)]
)
def test_lora_targets_follow_the_architecture(
    model_dirs: dict[str, Path], architecture: str, targets: tuple[str, ...]
) -> None:
    model = load_for_training(ModelOptions(str(model_dirs[architecture])), LoraOptions(rank=4))

    assert lora_target_names(model) == set(targets)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)


def test_target_modules_can_be_overridden(model_dirs: dict[str, Path]) -> None:
    options = ModelOptions(str(model_dirs["mistral"]), target_modules=("q_proj", "v_proj"))

    model = load_for_training(options, LoraOptions(rank=4))

    assert lora_target_names(model) == {"q_proj", "v_proj"}


def test_unknown_target_modules_name_the_layers_there_are(model_dirs: dict[str, Path]) -> None:
    options = ModelOptions(str(model_dirs["falcon"]), target_modules=("q_proj",))

    with pytest.raises(ModelLoadError, match="--target-modules.*query_key_value"):
        load_for_training(options, LoraOptions(rank=4))


@pytest.mark.parametrize("quant", ["4bit", "8bit"])
def test_quantization_without_cuda_says_which_flag_to_use(
    model_dirs: dict[str, Path], quant: str
) -> None:
    options = ModelOptions(str(model_dirs["mistral"]), quant=quant)

    with pytest.raises(ModelLoadError, match=f"--quant {quant} needs a CUDA GPU.*--quant none"):
        load_base_model(options, device=torch.device("cpu"))


def test_4bit_without_bitsandbytes_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "bitsandbytes" else real_find_spec(name, *args),
    )

    with pytest.raises(ModelLoadError, match=r"pip install 'tgtwin\[gpu\]'"):
        resolve_quant(ModelOptions("any", quant="4bit"), torch.device("cuda", 0))
    assert resolve_quant(ModelOptions("any"), torch.device("cpu")) == "none"


def test_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="TWIN_BASE_MODEL"):
        load_base_model(ModelOptions(str(tmp_path / "nowhere")))


CUSTOM_CODE = """
from pathlib import Path

Path({marker!r}).write_text("the repository's code ran")

from transformers import MistralConfig, MistralForCausalLM


class CustomConfig(MistralConfig):
    model_type = "twin_custom"


class CustomForCausalLM(MistralForCausalLM):
    config_class = CustomConfig
"""


def test_a_model_with_its_own_code_loads_only_with_trust_remote_code(
    model_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import shutil

    import transformers.dynamic_module_utils

    monkeypatch.setattr(
        transformers.dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules")
    )
    model_dir = Path(shutil.copytree(model_dirs["mistral"], tmp_path / "custom"))
    marker = tmp_path / "code-ran"
    (model_dir / "custom_model.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    config = json.loads((model_dir / "config.json").read_text())
    config["model_type"] = "twin_custom"
    config["architectures"] = ["CustomForCausalLM"]
    config["auto_map"] = {
        "AutoConfig": "custom_model.CustomConfig",
        "AutoModelForCausalLM": "custom_model.CustomForCausalLM",
    }
    (model_dir / "config.json").write_text(json.dumps(config))

    with pytest.raises(ModelLoadError, match="--trust-remote-code"):
        load_base_model(ModelOptions(str(model_dir)))
    assert not marker.exists()

    model = load_base_model(ModelOptions(str(model_dir), trust_remote_code=True))
    assert type(model).__name__ == "CustomForCausalLM" and marker.exists()


def saved_adapter(model_dir: Path, path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = load_for_training(
        ModelOptions(str(model_dir)), LoraOptions(rank=4), activation_checkpointing=False
    )
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.5)
    model.save_pretrained(str(path))
    return path


def test_the_bot_can_load_a_second_adapter_and_switch(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    model_dir = model_dirs["mistral"]
    first = saved_adapter(model_dir, tmp_path / "first", seed=1)
    second = saved_adapter(model_dir, tmp_path / "second", seed=2)
    model, tokenizer = load_for_inference(ModelOptions(str(model_dir)), first)
    inputs = torch.tensor([tokenizer("hi there")["input_ids"]])

    with torch.no_grad():
        before = model(input_ids=inputs).logits
        add_adapter(model, "next", second)
        still_first = model(input_ids=inputs).logits
        set_active_adapter(model, "next")
        after = model(input_ids=inputs).logits

    torch.testing.assert_close(still_first, before)
    assert not torch.allclose(after, before)
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ModelLoadError, match="active"):
        remove_adapter(model, "next")
    remove_adapter(model, "default")
    assert set(model.peft_config) == {"next"}


def test_loading_a_folder_without_an_adapter_fails_clearly(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError, match="adapter_config.json"):
        load_for_inference(ModelOptions(str(model_dirs["mistral"])), tmp_path)


@pytest.mark.gpu
@needs_cuda
def test_4bit_loads_quantized_with_bf16_compute(model_dirs: dict[str, Path]) -> None:
    pytest.importorskip("bitsandbytes", reason="4-bit needs bitsandbytes (pip install tgtwin[gpu])")

    model = load_for_training(
        ModelOptions(str(model_dirs["mistral"]), quant="4bit"), LoraOptions(rank=4)
    )

    base = model.get_base_model()
    assert base.is_loaded_in_4bit
    assert base.config.quantization_config.bnb_4bit_quant_type == "nf4"
    assert base.config.quantization_config.bnb_4bit_use_double_quant


@pytest.mark.gpu
@needs_cuda
def test_a_gpu_trains_in_bf16_where_supported_else_fp16() -> None:
    pytest.importorskip("bitsandbytes", reason="4-bit needs bitsandbytes (pip install tgtwin[gpu])")
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    assert resolve_dtype(ModelOptions("any"), torch.device("cuda", 0)) == expected
    assert resolve_quant(ModelOptions("any"), torch.device("cuda", 0)) == "4bit"
