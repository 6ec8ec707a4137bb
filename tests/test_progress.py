"""normlab.progress: a tqdm bar on a terminal, one line per 10% of the cost elsewhere."""

import io
import os
import re
import sys

import pytest

from normlab.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_not_a_terminal_writes_one_line_per_tenth_of_the_cost():
    out = io.StringIO()
    bar = Progress(100.0, 50, out)
    for _ in range(50):
        bar.update(2.0)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # the first item (2%), then each decile 10% .. 100%
    assert [int(re.match(r"\s*(\d+)%", ln).group(1)) for ln in lines] == [
        2, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert all("ETA" in ln and "elapsed" in ln for ln in lines)
    assert "50/50 runs" in lines[-1] and "5/50 runs" in lines[1]


def test_the_percentage_follows_the_cost_not_the_count():
    out = io.StringIO()
    bar = Progress(10.0, 2, out, unit="models")
    bar.update(9.0)  # one expensive item: 90% done after 1 of 2
    bar.update(1.0)
    first, last = out.getvalue().splitlines()
    assert first.lstrip().startswith("90%") and "1/2 models" in first
    assert last.lstrip().startswith("100%") and "2/2 models" in last


def test_disabled_or_empty_writes_nothing():
    out = io.StringIO()
    bar = Progress(5.0, 5, out, enabled=False)
    for _ in range(5):
        bar.update(1.0)
    Progress(0.0, 0, out).update(0.0)
    assert out.getvalue() == ""


def test_a_terminal_gets_a_bar_redrawn_in_place():
    out = _Terminal()
    bar = Progress(4.0, 4, out, unit="steps")
    for _ in range(4):
        bar.update(1.0)
    text = out.getvalue()
    assert text.count("\r") >= 2 and text.endswith("\n")  # redrawn, then left on screen
    assert "4/4 steps" in text.rsplit("\r", 1)[-1]
    bar.update(1.0)  # past the end: nothing more is drawn
    assert out.getvalue() == text


def test_log_lines_do_not_break_the_bar():
    out = io.StringIO()
    bar = Progress(2.0, 2, out)
    bar.log("model a: ok")
    bar.update(1.0)
    assert out.getvalue().splitlines()[0] == "model a: ok"
    term = _Terminal()
    bar = Progress(2.0, 2, term)
    bar.log("model b: ok")
    assert "model b: ok\n" in term.getvalue()


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="needs a pty")
def test_a_real_terminal_without_a_size_still_shows_the_bar():
    # a pty that reports 0 x 0 (ssh without a size, `script` off a terminal): tqdm's own
    # reading of it drew nothing at all
    import pty

    code = ("import time\nfrom normlab.progress import Progress\n"
            "p = Progress(5, 5, unit='steps')\n"
            "for _ in range(5):\n    p.update(1)\n    time.sleep(0.15)\n")
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stderr is the pty
        os.execv(sys.executable, [sys.executable, "-c", code])
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the pty
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    text = out.decode()
    assert "\r" in text and "5/5 steps" in text and "100%" in text, text


# the verdict table normlab lab / normlab report print: rich's on a terminal, plain elsewhere
_SUMMARY = {"claims": [
    {"id": "small-batch-remedies", "verdict": "inconclusive", "effect": 0.11,
     "ci": [-0.0191, 0.239], "n_seeds": 3, "stability": 0.78, "fragile": True,
     "seeds_needed": 4, "note": None},
    {"id": "regularization", "verdict": "not reproduced", "effect": -0.0387,
     "ci": [-0.0538, -0.0235], "n_seeds": 3, "stability": 0.89, "note": "[x] kept"},
    {"id": "batch-size-one", "verdict": "inconclusive", "effect": None, "ci": None,
     "n_seeds": 0, "note": None},
]}


def test_the_verdict_table_on_a_terminal_is_rich_and_whole(monkeypatch):
    import re

    from normlab.cli import _print_summary

    out = _Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setenv("COLUMNS", "110")
    _print_summary(_SUMMARY)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())
    assert "\x1b[" in out.getvalue()  # coloured verdicts
    lines = text.splitlines()
    for claim in _SUMMARY["claims"]:  # each claim on its line, id and verdict whole
        assert any(claim["id"] in ln and claim["verdict"] in ln for ln in lines), text
    assert "[-0.0538, -0.0235]" in text and "[x] kept" in text  # no markup eaten
    assert "not measured" in text and "about 4 seeds would" in text
    assert "--seeds=4" in lines[-1]


def test_the_verdict_table_in_a_log_keeps_its_plain_columns(monkeypatch):
    from normlab.cli import _print_summary

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    _print_summary(_SUMMARY)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["claim", "verdict", "effect", "95%", "interval", "seeds",
                                "stability"]
    assert lines[1] == ("small-batch-remedies    inconclusive          0.11  [-0.0191, 0.239]"
                        "          3  78% fragile   about 4 seeds would decide this")
    assert lines[3] == "batch-size-one          inconclusive      not measured"
