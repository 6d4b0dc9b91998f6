"""One error base class with the exit-code mapping (rmt_dist/errors.py): bad input exits 2,
a failure 1, and every command prints the one line and returns the class's code."""

from __future__ import annotations

import pytest

from rmt_dist import errors
from rmt_dist.config import ConfigError
from rmt_dist.data.errors import DataError
from rmt_dist.data.stage import StageError
from rmt_dist.launching.errors import LaunchError
from rmt_dist.launching.preflight import PreflightError
from rmt_dist.status import StatusError
from rmt_dist.tokenlabel.store import TokenLabelStoreError
from rmt_dist.tokenlabel.view import TeacherViewError

BAD_INPUT = [
    ConfigError,
    DataError,
    StageError,
    LaunchError,
    PreflightError,
    StatusError,
    TokenLabelStoreError,
    TeacherViewError,
]


@pytest.mark.parametrize("cls", BAD_INPUT, ids=lambda c: c.__name__)
def test_bad_input_errors_exit_2(cls):
    assert issubclass(cls, errors.BadInputError) and cls("x").exit_code == errors.EXIT_BAD_INPUT == 2


def test_engine_errors_map_failure_and_bad_input():
    from rmt_dist.engine.checkpoint import CheckpointSaveError, ResumeError

    assert issubclass(CheckpointSaveError, errors.RmtDistError) and CheckpointSaveError("x").exit_code == 1
    assert issubclass(ResumeError, errors.BadInputError)
    from rmt_dist.engine import preempt

    assert (preempt.EXIT_OK, preempt.EXIT_FAILED, preempt.EXIT_BAD_INPUT, preempt.EXIT_PREEMPTED) == (
        0,
        1,
        2,
        75,
    )


def test_a_command_prints_one_line_and_returns_the_class_code(capsys, tmp_path):
    from rmt_dist.config.__main__ import main

    assert main([str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
