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


def test_bad_arguments_fail_before_the_demo_model_is_converted(tmp_path, monkeypatch, capsys):
    """Issue 20: --tp-size 0 used to convert the demo model first (seconds) and only then say that 0 is
    invalid. With an empty cache, the error must come with the cache still empty: no conversion ran."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("HF_TP_CACHE", str(cache))
    for argv in (["generate", "--tp-size", "0", "--device", "cpu"],
                 ["generate", "--max-new-tokens", "0", "--device", "cpu"],
                 ["generate", "--device", "tpu"]):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("hf-tp generate: error: "), err
        assert list(cache.iterdir()) == [], f"{argv} converted the demo model before checking its arguments"
    with pytest.raises(SystemExit) as exit_:  # argparse's own check, also before any work
        main(["generate", "--dtype", "float64"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert list(cache.iterdir()) == []


def test_generate_help_shows_the_defaults(capsys):
    from hf_tp.cli import DEFAULT_MAX_NEW_TOKENS

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert f"(default: {DEFAULT_MAX_NEW_TOKENS})" in text and "(default: 2)" in text and "(default: auto)" in text
    assert "(default: None)" not in text and "(default: False)" not in text  # no meaningless defaults
    assert DEFAULT_MAX_NEW_TOKENS >= 128  # 32 cut the demo's answers mid-sentence (issue 20)


def test_info_lists_hand_written_and_automatic_policies(capsys):
    from hf_tp.policies import supported_model_types
    from hf_tp.policies.auto import auto_model_types

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    lines = {line.split(":", 1)[0]: line for line in out.splitlines() if ":" in line}
    assert all(t in lines["policies"] for t in supported_model_types())
    auto = auto_model_types()
    # The architectures tests/test_architectures.py checks through the automatic policy are among them.
    assert {"granite", "starcoder2", "olmo2"} <= set(auto)
    assert not set(auto) & set(supported_model_types())
    line = next(line for line in out.splitlines() if line.startswith("automatic policy"))
    assert all(t in line for t in auto), line


def test_a_folder_without_a_tokenizer_is_named_with_the_fix(tmp_path, capsys):
    """A checkpoint saved without its tokenizer: the whole message, on one line, says what is missing and how to
    add it (the CLI used to keep only the first line of Transformers' error, which named neither)."""
    from conftest import save_tiny_model, tiny_config

    folder = save_tiny_model(tmp_path / "no_tokenizer", tiny_config("llama"))
    capsys.readouterr()  # the save's progress bar
    assert main(["generate", str(folder), "--tp-size", "1", "--device", "cpu"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (above it, tp 1's Transformers load progress bar)
    assert last.startswith("hf-tp generate: error: ") and "has no usable tokenizer" in last, last
    assert "save_pretrained" in last  # the fix


def test_bench_refuses_a_missing_device_before_writing_a_checkpoint(tmp_path, capsys):
    """`hf-tp bench` with its defaults (--device cuda, the 16 GB llama3-8b shape) on a host without CUDA used
    to start writing the checkpoint and print nothing; it must fail at once, with the way out, and write nothing."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has CUDA: the defaults are valid here")
    root = tmp_path / "ck"
    assert main(["bench", "--checkpoint-dir", str(root)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no CUDA device" in err and "--smoke" in err, err
    assert not root.exists()
    assert main(["bench", "--device", "gpu", "--checkpoint-dir", str(root)]) == 1
    assert "--device must be cuda or cpu" in capsys.readouterr().err and not root.exists()
