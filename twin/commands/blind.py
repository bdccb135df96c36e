"""`twin eval --blind`: the owner's own blind test in the terminal.

For held-out contexts of any chat, the owner sees his real reply and the twin's in random
order and types which one he wrote. Picks are stored with the run, beside the ones people
make with `/blindtest` in the bot.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape


def run_blind_test(context: Any, run_id: int | None, count: int, options: Any) -> None:
    """Show `count` trials (fewer where fewer held-out contexts are left) and record the picks."""
    from storage import blind as blind_store
    from storage.blind import OWNER_USER_ID as OWNER_TRIALS
    from storage.runs import active_run, get_run
    from training.errors import TrainingError
    from training.heldout import held_out_examples, replies_to
    from training.intervals import blind_test_text
    from training.model import load_for_inference, serving_options

    database = context.database()
    with database.session() as session:
        run = get_run(session, run_id) if run_id is not None else active_run(session)
        if run is None or not run.adapter_path or not run.dataset_fingerprint:
            raise TrainingError("no finished run to test: `twin train`, or name a run id")
        run_id, fingerprint = run.id, run.dataset_fingerprint
        base_model, adapter, trained_with = run.base_model, Path(run.adapter_path), run.options
        seen = blind_store.shown_keys(session, OWNER_TRIALS)
    examples = [
        example
        for example in held_out_examples(context.settings.data_dir, fingerprint)
        if example.key not in seen
    ]
    rng = random.Random(options.seed)  # noqa: S311 - an order, not a secret
    chosen = rng.sample(examples, min(count, len(examples)))
    console = Console()
    if not chosen:
        console.print("every held-out context was already shown: nothing left to test")
        return
    console.print(f"generating the twin's replies to {len(chosen)} held-out contexts ...")
    model, tokenizer = load_for_inference(serving_options(base_model, trained_with), adapter)
    replies = replies_to(model, tokenizer, chosen, options.sampling())
    for number, (example, twin_reply) in enumerate(zip(chosen, replies, strict=True), 1):
        owner_first = rng.random() < 0.5
        console.rule(f"{number}/{len(chosen)}")
        answer = _ask(console, example, twin_reply, owner_first)
        if answer is None:
            break
        with database.session() as session:
            trial = blind_store.create_trial(
                session,
                run_id=run_id,
                chat_id=example.chat_id,
                user_id=OWNER_TRIALS,
                example_key=example.key,
                context="\n".join(t.content for t in example.context[-4:]),
                owner_reply=example.owner_reply,
                twin_reply=twin_reply,
                owner_first=owner_first,
            )
            found = blind_store.answer_trial(session, trial, OWNER_TRIALS, answer).picked_owner
        console.print("right: that one is yours" if found else "that was the twin")
    with database.session() as session:
        mine = blind_store.picks(session, run_id, owner=True)
    found = sum(not took for took in mine.took_twin)
    console.print(f"you found your own reply {found} times of {len(mine.took_twin)}")
    with database.session() as session:
        console.print(blind_test_text(blind_store.picks(session, run_id).took_twin))


def _ask(console: Console, example: Any, twin_reply: str, owner_first: bool) -> bool | None:
    """Show the context and both replies; True if the first was picked, None to stop."""
    first, second = (
        (example.owner_reply, twin_reply) if owner_first else (twin_reply, example.owner_reply)
    )
    for turn in example.context[-4:]:
        speaker = "you" if turn.role == "assistant" else "they"
        console.print(f"[bold]{speaker}:[/bold] {escape(turn.content)}")
    console.print(f"\n[bold]A:[/bold] {escape(first)}\n[bold]B:[/bold] {escape(second)}")
    answer = typer.prompt("Which one did you write? (a/b, q to stop)").strip().lower()
    return None if answer.startswith("q") else answer.startswith("a")
