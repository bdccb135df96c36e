"""`TrainOptions`: everything a training run needs besides the data, with its CLI help.

`twin train` builds its flags from these fields (help, flag name, default:
`twin.commands.flags`), so a default is written only here; the run saves them to reproduce it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from training.model import LoraOptions, ModelOptions
from training.options import option

PREFERENCE_LOSSES = ("auto", "dpo", "kto")
OPTIMIZER_CHOICES = ("auto", "adamw", "paged_adamw_8bit")


@dataclass(frozen=True)
class TrainOptions:
    """Everything a training run needs besides the data; saved with the run to reproduce it.

    `twin train` builds its flags from these fields (help, flag name, default), so a default
    is written only here.
    """

    base_model: str | None = option(
        None, "Hub name or folder (default: the model the dataset was built for)."
    )
    quant: str = option("auto", "4bit (QLoRA), 8bit or none; auto: 4bit on a GPU.")
    dtype: str = option("auto", "bfloat16, float16 or float32; auto: by hardware.")
    trust_remote_code: bool = option(False, "Run the model repository's own code.")
    target_modules: tuple[str, ...] | None = option(
        None, "Layers to adapt, comma separated (default: by architecture)."
    )
    attention: str = option("auto", "sdpa, eager or flash_attention_2; auto: best.")
    rank: int = option(16, "LoRA rank.")
    alpha: int = option(32, "LoRA alpha (scaling).")
    dropout: float = option(0.05, "LoRA dropout.")
    epochs: float = option(2.0, "Passes over the data.")
    max_steps: int | None = option(None, "Stop after this many steps.")
    learning_rate: float = option(2e-4, "Peak learning rate.", "--lr")
    warmup_ratio: float = option(0.03, "Share of the steps that warm the learning rate up.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    max_grad_norm: float = option(1.0, "Clip gradients to this norm (0: no clipping).")
    batch_tokens: int = option(16384, "Trained-on tokens per optimizer step, all GPUs together.")
    row_tokens: int | None = option(
        None, "Tokens per forward pass (default: 4096 with FlashAttention-2, 2048 GPU, 512 CPU)."
    )
    eval_every: int = option(50, "Validation loss every N steps (0: at the end).")
    checkpoint_every: int = option(100, "Checkpoint every N steps (0: never).")
    activation_checkpointing: bool = option(
        True,
        "Recompute activations in the backward pass: less memory, a little slower.",
        "--activation-checkpointing/--no-activation-checkpointing",
    )
    optimizer: str = option("auto", "adamw or paged_adamw_8bit (GPU); auto: by device.")
    continue_training: bool = option(
        False,
        "Continue the active run's adapter on sessions newer than it saw, plus replay.",
        "--continue",
    )
    replay: float = option(0.2, "With --continue: older examples mixed in, x new count.")
    resume: bool = option(False, "Finish the last killed run from its checkpoint.")
    dataset: str | None = option(None, "Dataset fingerprint (default: the newest).")
    activate: bool = option(True, "Serve the new run once it succeeds.", "--activate/--no-activate")
    gate_margin: float = option(
        0.0,
        "With --continue: how much worse (a share) the held-out loss may be than the serving "
        "run's before the new run is kept from serving (default: TWIN_GATE_MARGIN).",
        setting="gate_margin",
    )
    force: bool = option(False, "With --continue: serve the new run even if it is worse.")
    seed: int = option(0, "Seed for data order and LoRA init.")
    dpo: bool = option(
        False,
        "Preference-tune the active run (TRL DPO or KTO) on --self-play pairs and your "
        "feedback, as a new run.",
    )
    self_play: int = option(
        64, "With --dpo: training contexts the run answers itself (rejected) vs you (chosen)."
    )
    beta: float = option(0.1, "With --dpo: how far from the active run's replies (beta).")
    preference_loss: str = option(
        "auto",
        "With --dpo: dpo (pairs only), kto (pairs and single replies judged by reactions), "
        "or auto (kto when judged replies are stored, else dpo).",
    )

    def problems(self) -> list[tuple[str, str]]:
        """Every invalid value as (field, message), so the CLI reports them all at once."""
        found = (
            self.model_options(self.base_model or "?").problems() + self.lora_options().problems()
        )
        checks = [
            (self.epochs > 0, "epochs", f"{self.epochs}: must be positive"),
            (self.max_steps is None or self.max_steps > 0, "max_steps", f"{self.max_steps}: > 0"),
            (self.learning_rate > 0, "learning_rate", f"{self.learning_rate}: must be positive"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio", f"{self.warmup_ratio}: in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", f"{self.weight_decay}: 0 or more"),
            (self.max_grad_norm >= 0, "max_grad_norm", f"{self.max_grad_norm}: 0 or more"),
            (self.batch_tokens > 0, "batch_tokens", f"{self.batch_tokens}: must be positive"),
            (
                self.row_tokens is None or self.row_tokens > 0,
                "row_tokens",
                f"{self.row_tokens}: must be positive",
            ),
            (self.eval_every >= 0, "eval_every", f"{self.eval_every}: 0 (off) or more"),
            (self.checkpoint_every >= 0, "checkpoint_every", f"{self.checkpoint_every}: 0 or more"),
            (self.replay >= 0, "replay", f"{self.replay}: must be 0 or more"),
            (self.gate_margin >= 0, "gate_margin", f"{self.gate_margin}: 0 or more"),
            (
                self.optimizer in OPTIMIZER_CHOICES,
                "optimizer",
                f"{self.optimizer!r}: use one of {', '.join(OPTIMIZER_CHOICES)}",
            ),
            (
                not (self.resume and self.continue_training),
                "resume",
                "and --continue: pick one (--resume finishes a killed run as it was)",
            ),
            (
                not (self.dpo and (self.resume or self.continue_training)),
                "dpo",
                "with --resume or --continue: pick one (--dpo starts from the active run)",
            ),
            (self.self_play > 0, "self_play", f"{self.self_play}: must be positive"),
            (self.beta > 0, "beta", f"{self.beta}: must be positive"),
            (
                self.preference_loss in PREFERENCE_LOSSES,
                "preference_loss",
                f"{self.preference_loss!r}: use one of {', '.join(PREFERENCE_LOSSES)}",
            ),
        ]
        return found + [(name, message) for ok, name, message in checks if not ok]

    def model_options(self, base_model: str | None = None) -> ModelOptions:
        return ModelOptions(
            base_model=base_model or self.base_model or "",
            quant=self.quant,
            dtype=self.dtype,
            trust_remote_code=self.trust_remote_code,
            target_modules=self.target_modules,
            attention=self.attention,
        )

    def lora_options(self) -> LoraOptions:
        return LoraOptions(rank=self.rank, alpha=self.alpha, dropout=self.dropout)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["target_modules"] = list(self.target_modules) if self.target_modules else None
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainOptions:
        known = {item.name for item in fields(cls)}
        kept = {key: value for key, value in values.items() if key in known}
        if kept.get("target_modules"):
            kept["target_modules"] = tuple(kept["target_modules"])
        return cls(**kept)
