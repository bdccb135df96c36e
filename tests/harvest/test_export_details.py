"""What a person saw beyond the words, stored: polls, contacts, places, files, durations,
forward names, link targets, inline bots and reactions, in Telegram Desktop's shapes."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from harvest.importer import ImportOptions, import_export
from storage import Message
from tests.harvest.exports import ALICE, OWNER, OWNER_ID, chat, full_export, message, write_export


def import_messages(database, tmp_path: Path, messages: list[dict]) -> dict[int, Message]:
    export = full_export([chat(ALICE[1], "personal_chat", ALICE[0], messages)])
    import_export(database, ImportOptions(write_export(tmp_path / "result.json", export)))
    with database.session() as session:
        return {m.message_id: m for m in session.scalars(select(Message))}


def test_media_is_stored_as_what_it_showed(database, tmp_path: Path) -> None:
    poll = {
        "question": "Pizza tonight?",
        "closed": False,
        "total_voters": 2,
        "answers": [
            {"text": "Yes", "voters": 2, "chosen": True},
            {"text": [{"type": "bold", "text": "No"}], "voters": 0, "chosen": False},
        ],
    }
    contact = {"first_name": "Ivan", "last_name": "Petrov", "phone_number": "+7 900 000 0000"}
    point = {"latitude": 55.751244, "longitude": 37.618423}
    stored = import_messages(
        database,
        tmp_path,
        [
            message(1, ALICE, "", poll=poll),
            message(2, OWNER, "", contact_information=contact),
            message(
                3,
                ALICE,
                "",
                place_name="Café Pushkin",
                address="Tverskoy 26",
                location_information=point,
            ),
            message(4, OWNER, "", location_information=point),
            message(
                5,
                ALICE,
                "",
                file="(File not included.)",
                file_name="contract.pdf",
                mime_type="application/pdf",
            ),
            message(
                6,
                OWNER,
                "",
                file="voice_messages/a.ogg",
                media_type="voice_message",
                duration_seconds=12,
            ),
            message(
                7, ALICE, "", file="video_files/v.mp4", media_type="video_file", duration_seconds=75
            ),
            message(
                8,
                ALICE,
                "",
                file="music/s.mp3",
                media_type="audio_file",
                performer="Kino",
                title="Gruppa krovi",
            ),
        ],
    )
    assert stored[1].media_type == "poll" and stored[1].text == ""
    assert stored[1].media_text == "📊 Pizza tonight?\n• Yes\n• No"
    assert stored[2].media_text == "👤 Ivan Petrov"  # never the phone number
    assert stored[3].media_type == "venue" and stored[3].media_text == "📍 Café Pushkin"
    assert stored[4].media_type == "location" and stored[4].media_text == "📍 55.75124, 37.61842"
    assert stored[5].media_type == "file" and stored[5].media_text == "contract.pdf"
    assert (stored[6].duration, stored[7].duration) == (12, 75)
    assert stored[8].media_text == "Kino – Gruppa krovi"


def test_forward_names_link_targets_bots_and_reactions_are_stored(database, tmp_path: Path) -> None:
    text = ["read ", {"type": "text_link", "text": "this", "href": "https://example.org/a"}]
    reactions = [
        {
            "type": "emoji",
            "count": 2,
            "emoji": "❤",
            "recent": [
                {"from": ALICE[1], "from_id": f"user{ALICE[0]}", "date": "2024-03-01T10:00:00"},
                {"from": OWNER[1], "from_id": f"user{OWNER_ID}", "date": "2024-03-01T10:01:00"},
            ],
        },
        {"type": "custom_emoji", "count": 1, "document_id": "5368324170671202286"},
        {"type": "paid", "count": 3},
    ]
    stored = import_messages(
        database,
        tmp_path,
        [
            message(1, ALICE, "funny", forwarded_from="Demo Channel"),
            message(2, OWNER, text, reactions=reactions),
            message(3, ALICE, "gif", via_bot="@gif"),
            message(4, ALICE, "from a hidden account", forwarded_from=None),
        ],
    )
    assert stored[1].forwarded and stored[1].forwarded_from == "Demo Channel"
    assert stored[2].text == "read this" and stored[2].links == ["https://example.org/a"]
    assert stored[2].reactions == [
        {"reaction": "❤", "count": 2, "recent": [ALICE[0], OWNER_ID]},
        {"reaction": "custom_emoji:5368324170671202286", "count": 1, "recent": []},
        {"reaction": "paid", "count": 3, "recent": []},
    ]
    assert stored[3].via_bot == "@gif"
    assert stored[4].forwarded and stored[4].forwarded_from is None
    assert stored[1].reactions is None and stored[1].links is None
