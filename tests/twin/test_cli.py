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


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_data_dir_and_the_database_are_private_from_creation(tmp_path: Path) -> None:
    from tests.harvest.exports import many_messages_export, write_export

    export = write_export(tmp_path / "result.json", many_messages_export(2, 20))
    data = tmp_path / "data"
    assert main(["--data-dir", str(data), "import", str(export)]) == 0
    assert _mode(data) == 0o700
    files = [p for p in data.iterdir() if p.name.startswith("twin.db")]
    assert data / "twin.db" in files
    assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}


def test_files_left_readable_by_others_are_made_private_on_the_next_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert main(["--data-dir", str(data), "db", "upgrade"]) == 0
    dataset = data / "datasets" / "abc123" / "train"
    dataset.mkdir(parents=True)
    (dataset / "data-00000-of-00001.arrow").write_bytes(b"rows")
    (data / "datasets" / "abc123" / "stats.json").write_text("{}")
    for path in (data, data / "datasets", dataset.parent, dataset, data / "twin.db"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    for path in dataset.parent.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    assert main(["--data-dir", str(data), "chats"]) == 0
    assert _mode(data) == 0o700 and _mode(data / "twin.db") == 0o600
    everything = list((data / "datasets").rglob("*"))
    assert everything and all(_mode(p) == (0o700 if p.is_dir() else 0o600) for p in everything)


def test_a_full_disk_anywhere_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    import errno

    import harvest.importer

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.arrow"))

    monkeypatch.setattr(harvest.importer, "import_export", full)
    export = tmp_path / "result.json"
    export.write_text("{}")
    assert main(["--data-dir", str(tmp_path / "data"), "import", str(export)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "disk is full" in err and "x.arrow" in err


def test_a_full_disk_wrapped_by_a_library_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    import harvest.importer

    def full(*args, **kwargs):
        message = "Error while serializing: IoError(Os { code: 28, kind: StorageFull, .. })"
        raise RuntimeError(message)  # how safetensors reports it while an adapter is saved

    monkeypatch.setattr(harvest.importer, "import_export", full)
    export = tmp_path / "result.json"
    export.write_text("{}")
    assert main(["--data-dir", str(tmp_path / "data"), "import", str(export)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "disk is full" in err


def test_a_dataset_build_writes_only_private_files(tmp_path: Path, monkeypatch) -> None:
    from storage import open_database
    from tests.training.chat_data import generated_store, save_tokenizer, store

    data = tmp_path / "data"
    database = open_database(f"sqlite:///{data / 'twin.db'}")
    store(database, *generated_store(chats=3, sessions=6))
    database.close()
    monkeypatch.setenv("TWIN_BASE_MODEL", str(save_tokenizer(tmp_path / "tokenizer")))
    assert main(["--data-dir", str(data), "dataset", "build"]) == 0
    written = list((data / "datasets").rglob("*"))
    assert any(p.suffix == ".arrow" for p in written)
    wrong = {str(p): oct(_mode(p)) for p in written if _mode(p) not in (0o600, 0o700)}
    assert not wrong
