"""The shipped demo export is synthetic, deterministic and what its generator writes."""

from __future__ import annotations

import json

from twin.demo_export import OWNER_ID, build_export, shipped_export


def test_shipped_export_is_exactly_what_the_generator_writes() -> None:
    shipped = json.loads(shipped_export().read_text(encoding="utf-8"))
    assert shipped == build_export(), "regenerate: python -m twin.demo_export"


def test_demo_export_has_a_few_thousand_messages_with_the_owner_in_every_chat() -> None:
    export = build_export()
    personal = [c for c in export["chats"]["list"] if c["type"] == "personal_chat"]
    total = sum(len(chat["messages"]) for chat in personal)
    assert 2000 <= total <= 5000
    for chat in personal:
        senders = {message.get("from_id") for message in chat["messages"]}
        assert f"user{OWNER_ID}" in senders and len(senders - {None}) == 2
    assert export["personal_information"]["user_id"] == OWNER_ID
