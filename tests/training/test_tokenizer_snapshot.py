"""The tokenizer snapshot a rebuild loads instead of `AutoTokenizer`: same behaviour, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.training.chat_data import save_tokenizer
from training.dataset.keys import tokenizer_files
from training.tokenizer_snapshot import (
    SNAPSHOTS_DIR,
    behaviour,
    load_dataset_tokenizer,
    save_snapshot,
)


def save_llama_class_tokenizer(path: Path) -> Path:
    """A SentencePiece-style BPE saved as `LlamaTokenizer`, the class of Mistral 7B's tokenizer.

    transformers rebuilds such a tokenizer's pipeline in its own `__init__` instead of taking
    tokenizer.json as it is: the snapshot must hold what it built.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from tests.training.chat_data import tokenizer_texts
    from training.tiny import MISTRAL_CHAT_TEMPLATE, SPECIAL_TOKENS

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=700, special_tokens=SPECIAL_TOKENS, show_progress=False
    )
    tokenizer.train_from_iterator(tokenizer_texts(), trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    path.mkdir(parents=True)
    tokenizer.save(str(path / "tokenizer.json"))
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "legacy": False,
        "chat_template": MISTRAL_CHAT_TEMPLATE,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


def snapshots(root: Path) -> list[Path]:
    folder = root / SNAPSHOTS_DIR
    return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("kind", ["mistral-template", "no-template", "llama-class"])
def test_the_second_load_comes_from_a_snapshot_that_behaves_like_the_original(
    tmp_path: Path, kind: str
) -> None:
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    from training.model import load_tokenizer

    if kind == "llama-class":
        path = save_llama_class_tokenizer(tmp_path / "model")
        assert type(load_tokenizer(str(path))).__name__ == "LlamaTokenizer"
    else:
        template = "mistral" if kind == "mistral-template" else None
        path = save_tokenizer(tmp_path / "model", chat_template=template)
    files = tokenizer_files(str(path))

    first = load_dataset_tokenizer(str(path), files, tmp_path / "datasets")
    (snapshot,) = snapshots(tmp_path / "datasets")
    second = load_dataset_tokenizer(str(path), files, tmp_path / "datasets")

    assert Path(second.name_or_path) == snapshot
    assert type(second) is TokenizersBackend
    assert behaviour(second) == behaviour(first) == behaviour(load_tokenizer(str(path)))


def test_a_fresh_process_loads_the_snapshot_without_importing_torch(tmp_path: Path) -> None:
    path = save_tokenizer(tmp_path / "model")
    root = tmp_path / "datasets"
    load_dataset_tokenizer(str(path), tokenizer_files(str(path)), root)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from training.dataset.keys import tokenizer_files\n"
        "from training.tokenizer_snapshot import load_dataset_tokenizer\n"
        f"tokenizer = load_dataset_tokenizer({str(path)!r}, tokenizer_files({str(path)!r}), "
        f"Path({str(root)!r}))\n"
        "ids = tokenizer.backend_tokenizer.encode('hello').ids\n"
        "print(tokenizer.name_or_path, 'torch' in sys.modules, len(ids) > 0)\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )

    name, torch_imported, encoded = result.stdout.split()
    assert Path(name).parent == root / SNAPSHOTS_DIR
    assert (torch_imported, encoded) == ("False", "True")


def test_a_changed_chat_template_makes_a_new_snapshot(tmp_path: Path) -> None:
    path = save_tokenizer(tmp_path / "model")
    root = tmp_path / "datasets"
    load_dataset_tokenizer(str(path), tokenizer_files(str(path)), root)
    template_file = path / "chat_template.jinja"
    template_file.write_text("{{ bos_token }}" + template_file.read_text(), encoding="utf-8")

    tokenizer = load_dataset_tokenizer(str(path), tokenizer_files(str(path)), root)

    assert len(snapshots(root)) == 2
    assert tokenizer.chat_template.startswith("{{ bos_token }}")
    again = load_dataset_tokenizer(str(path), tokenizer_files(str(path)), root)
    assert Path(again.name_or_path).parent == root / SNAPSHOTS_DIR
    assert again.chat_template == tokenizer.chat_template


def test_a_copy_that_behaves_differently_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.model import load_tokenizer

    path = save_tokenizer(tmp_path / "model")
    original = load_tokenizer(str(path))
    real_load = sys.modules["training.tokenizer_snapshot"]._load

    def load_with_another_template(folder: Path) -> Any:
        copy = real_load(folder)
        copy.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        return copy

    monkeypatch.setattr("training.tokenizer_snapshot._load", load_with_another_template)

    assert not save_snapshot(original, tmp_path / "datasets" / SNAPSHOTS_DIR / "key")
    assert not (tmp_path / "datasets" / SNAPSHOTS_DIR / "key").exists()
    assert list((tmp_path / "datasets" / SNAPSHOTS_DIR).iterdir()) == []


def test_a_tampered_snapshot_is_ignored_and_the_tokenizer_loaded_in_full(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = save_tokenizer(tmp_path / "model")
    root = tmp_path / "datasets"
    original = load_dataset_tokenizer(str(path), tokenizer_files(str(path)), root)
    (snapshot,) = snapshots(root)
    tokenizer_json = snapshot / "tokenizer.json"
    body = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    body["added_tokens"][0]["content"] = "<tampered>"
    tokenizer_json.write_text(json.dumps(body), encoding="utf-8")

    loaded = load_dataset_tokenizer(str(path), tokenizer_files(str(path)), root)

    assert Path(loaded.name_or_path) == path
    assert behaviour(loaded) == behaviour(original)
    assert "ignoring the tokenizer snapshot" in caplog.text
    saved_again = load_dataset_tokenizer(str(path), tokenizer_files(str(path)), root)
    assert Path(saved_again.name_or_path) == snapshot
    assert behaviour(saved_again) == behaviour(original)
