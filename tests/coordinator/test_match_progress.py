"""Progress of a match round: every long stage is announced, in order, before its work starts."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from coordinator.linkage.blocking import BlockingConfig
from coordinator.linkage.match_round import run_match_round
from nodes.encode import encode_file
from pplink.cli.progress import StageProgress
from pplink.lab.synth import generate_synth, write_synth
from tests.support import AGENCIES, Setup


class _Recorder:
    """A stage-aware progress callback that records what it hears, with times."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object, object]] = []

    def stage(self, name: str, total: int | None) -> None:
        self.events.append(("stage", name, total))

    def __call__(self, done: int, total: int) -> None:
        self.events.append(("tick", done, total))


def test_match_round_announces_every_stage_in_order(setup: Setup, tmp_path: Path) -> None:
    """loading, blocking, comparing, solving and writing are announced once each, in that order;
    blocking and comparing tick band by band up to the number of bands."""
    write_synth(generate_synth(150, AGENCIES, seed=3), tmp_path / "records")
    paths = [
        encode_file(setup.agreement, a, setup.secret, setup.key(a), tmp_path / "records" / f"{a}.csv",
                    tmp_path / f"{a}.enc", skip_invalid=True).output
        for a in AGENCIES
    ]  # fmt: skip
    recorder = _Recorder()
    run_match_round(setup.agreement, setup.key("coordinator"), paths, tmp_path / "out", workers=2,
                    blocking=BlockingConfig(bands=6), progress=recorder)
    stages = [name for kind, name, _ in recorder.events if kind == "stage"]
    assert stages == ["loading", "blocking", "comparing", "solving", "writing"]
    # Between "blocking" and "solving", the ticks reach 6 of 6 twice: once counting, once comparing.
    first, last = recorder.events.index(("stage", "blocking", 6)), recorder.events.index(("stage", "solving", None))
    ticks = [e for e in recorder.events[first:last] if e[0] == "tick"]
    assert ticks.count(("tick", 6, 6)) == 2 and all(total == 6 for _, _, total in ticks)


def test_cli_match_with_progress_names_every_stage(setup: Setup, tmp_path: Path) -> None:
    """`pplink coordinator match --progress` draws a bar for each stage on stderr, stdout unchanged."""
    from click.testing import CliRunner

    from pplink.cli.main import cli

    write_synth(generate_synth(60, AGENCIES, seed=4), tmp_path / "records")
    paths = [
        str(encode_file(setup.agreement, a, setup.secret, setup.key(a), tmp_path / "records" / f"{a}.csv",
                        tmp_path / f"{a}.enc", skip_invalid=True).output)
        for a in AGENCIES
    ]  # fmt: skip
    args = ["coordinator", "match", "--agreement", str(setup.agreement_path), "--key",
            str(setup.key_path("coordinator")), *paths, "-o", str(tmp_path / "out"), "--progress", "--format", "json"]
    result = CliRunner(mix_stderr=False).invoke(cli, args)
    assert result.exit_code == 0, result.output
    for stage in ("loading", "comparing", "solving", "writing"):
        assert f"match: {stage}" in result.stderr
    assert json.loads(result.stdout)["entities"] > 0


def test_stage_bar_draws_each_stage_and_its_clock() -> None:
    """Each stage gets its own line named after it; a stage without units shows its elapsed time."""
    out = io.StringIO()
    bar = StageProgress("match", file=out)
    bar.stage("loading")
    time.sleep(0.05)
    bar.stage("comparing", 3)
    bar(1, 3)
    bar.close()
    text = out.getvalue()
    assert "match: loading [00:00]" in text and "match: comparing" in text and "1/3" in text
