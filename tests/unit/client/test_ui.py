"""Progress where no terminal is: a log file or journald gets lines while a long step runs."""

from __future__ import annotations

import io
import re
import time

from rich.console import Console

from fedlora.client._ui import Reporter


def test_progress_off_a_terminal_is_lines_while_the_step_runs() -> None:
    out = io.StringIO()
    reporter = Reporter(Console(file=out, force_terminal=False, width=200))
    with reporter.stages(every_s=0.05) as stages:
        encrypting = stages.bar("bank-a round 3: encrypting", 1)
        time.sleep(0.3)  # one long step: no update arrives while it runs
        encrypting(1)
    lines = out.getvalue().splitlines()
    assert lines[0] == "bank-a round 3: encrypting: started (1 to do)"
    periodic = [line for line in lines if re.fullmatch(r".*: 0/1 \(0%\) after \d+s", line)]
    assert len(periodic) >= 2, lines
    assert re.fullmatch(r"bank-a round 3: encrypting: done \(1\) in 0\.\ds", lines[-1]), lines
    # Finished steps are not reported again.
    time.sleep(0.15)
    assert out.getvalue().splitlines() == lines
