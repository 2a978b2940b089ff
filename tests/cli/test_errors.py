"""Bad input on any command: one message on stderr, nothing on stdout, exit code 2, no traceback."""

import sys

import pytest

from pocketlearn.cli.main import main

BAD = [
    ["plan", "--model", "nope", "--device", "phone-1g"],
    ["plan", "--model", "digits-mlp", "--device", "toaster"],
    ["train", "--model", "digits-mlp", "--data", "nope"],
    ["train", "--model", "digits-mlp", "--data", "digits", "--limit", "0"],
    ["train", "--model", "digits-mlp", "--data", "digits", "-o", "rank"],
    ["ids", "--data", "no-such-file.csv"],
    ["ids", "--device", "toaster"],
    ["har", "--device", "toaster"],
    ["report", "no-such-run"],
    ["fed", "simulate", "no-such.toml"],
    ["fed", "partition", "no-such.toml", "--out", "parts"],
    ["fed", "join", "--server", "127.0.0.1:9092", "--data", "no-such.pt", "--device", "phone-1g", "--insecure"],
    ["device-train", "--program", "no-such.pte", "--data", "no-such.pt"],
]


@pytest.mark.parametrize("args", BAD, ids=" ".join)
def test_bad_input_is_one_message_on_stderr_and_exit_2(args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pocketlearn", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capsys.readouterr()
    assert exit_.value.code == 2, (out, err)
    assert out == "" and err.strip(), (out, err)
    assert "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written
