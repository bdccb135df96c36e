"""The `twin` command: every command has help with an example, errors are one readable line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from twin.cli import app, main


def all_commands() -> list[tuple[str, object]]:
    root = typer.main.get_command(app)
    found = []

    def walk(prefix: str, command) -> None:
        found.append((prefix, command))
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(f"{prefix} {name}", sub)

    walk("twin", root)
    return found


@pytest.mark.parametrize(("name", "command"), all_commands(), ids=lambda v: str(v))
def test_every_command_has_help_with_an_example(name: str, command) -> None:
    text = command.help or ""
    assert "Example:" in text, f"`{name} --help` shows no example"
    assert f"Example: {name.split()[0]}" in text or "twin" in text.split("Example:")[1]


def test_every_stage_of_the_architecture_has_a_command() -> None:
    names = {name for name, _ in all_commands()}
    for expected in (
        "twin login",
        "twin harvest",
        "twin import",
        "twin chats",
        "twin dataset build",
        "twin dataset stats",
        "twin train",
        "twin eval",
        "twin runs",
        "twin chat",
        "twin bot",
        "twin demo",
        "twin db upgrade",
        "twin config",
    ):
        assert expected in names


def test_usage_errors_exit_2_without_traceback(capsys) -> None:
    assert main(["bogus-command"]) == 2
    assert main(["db", "upgrade", "--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert "No such command" in err and "No such option" in err and "Traceback" not in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert "tgtwin 0.1.0" in capsys.readouterr().out


def test_db_upgrade_creates_the_database(tmp_path: Path, capsys) -> None:
    assert main(["--data-dir", str(tmp_path / "data"), "db", "upgrade"]) == 0
    assert (tmp_path / "data" / "twin.db").exists()
    assert "revision" in capsys.readouterr().out


def test_bad_setting_is_one_line_and_exit_code_1(monkeypatch, capsys) -> None:
    monkeypatch.setenv("TWIN_SESSION_GAP", "soon")
    assert main(["config"]) == 1
    err = capsys.readouterr().err
    assert "TWIN_SESSION_GAP" in err and "Traceback" not in err


def test_too_new_database_is_a_readable_error(tmp_path: Path, capsys) -> None:
    from sqlalchemy import text

    from storage import open_database

    url = f"sqlite:///{tmp_path / 'twin.db'}"
    database = open_database(url)
    with database.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    database.close()
    assert main(["--data-dir", str(tmp_path), "db", "upgrade"]) == 1
    err = capsys.readouterr().err
    assert "newer tgtwin" in err and "Traceback" not in err


def test_help_starts_fast_without_heavy_imports() -> None:
    code = (
        "import sys, twin.cli; "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets', 'telethon') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
