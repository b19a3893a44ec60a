"""The ``hf-tp`` command line as a user meets it: plain-text help listing every command, --version,
and errors as one line (exit status 1) unless --debug asks for the traceback."""

from __future__ import annotations

import pytest

import hf_tp
from hf_tp.cli import main


def test_help_lists_every_command_in_plain_text(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(command in text for command in ("generate", "bench", "info", "--version", "--debug"))
    assert "``" not in text  # RST markup of a docstring has no place in a terminal


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"hf-tp {hf_tp.__version__}"


@pytest.mark.parametrize("argv", [["generate", "/no/such/folder", "--device", "cpu"],
                                  ["generate", "--tp-size", "0", "--device", "cpu"]])
def test_errors_are_one_line_and_debug_shows_the_traceback(capsys, argv):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("hf-tp generate: error: ") and "Traceback" not in err
    with pytest.raises(ValueError):  # CheckpointError and the tp_size check are both ValueErrors
        main(["--debug", *argv])
    with pytest.raises(ValueError):  # also accepted after the command
        main([*argv, "--debug"])
