"""The stage runner's contract (stages/_cli.py): an expected failure (a GemelError, whatever
else it derives from) is one line on stderr and exit status 2; any other exception is a bug and
reaches the caller with its traceback, never swallowed into a one-line message."""
from __future__ import annotations

import pytest

from gemel.data.tables import InputFileError
from gemel.errors import GemelError
from stages import _cli


def raising(error: BaseException):
    def main(argv: list[str] | None) -> int:
        raise error
    return main


@pytest.mark.parametrize("error", [GemelError("bad setting:\n  fix   it"), InputFileError("bad\tfile\n")])
def test_an_expected_failure_is_one_line_and_status_2(error: GemelError, capsys) -> None:
    assert _cli.run("stage", raising(error)) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1
    assert out.err == f"stage: error: {' '.join(str(error).split())}\n"


@pytest.mark.parametrize("error", [ValueError("a bug"), KeyError("model"), TypeError("a bug"), RuntimeError("a bug"),
                                   OSError("disk")])
def test_any_other_exception_keeps_its_traceback(error: Exception, capsys) -> None:
    with pytest.raises(type(error)):
        _cli.run("stage", raising(error))
    assert capsys.readouterr().err == ""


def test_a_stage_that_succeeds_returns_its_status() -> None:
    assert _cli.run("stage", lambda argv: 0, []) == 0
    assert _cli.run("stage", lambda argv: len(argv), ["a", "b", "c"]) == 3
