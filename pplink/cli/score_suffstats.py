"""``pplink score suffstats-demo``: the sufficient-statistics run over a demo folder (as ``score demo``)."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["suffstats_demo_command"]


@click.command("suffstats-demo")
@click.option("--dir", "work_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=Path("pplink-demo"), show_default=True, help="A folder written by `pplink demo`.")
@click.option("--training-epsilon", type=click.FloatRange(min=0.0, min_open=True, max=100.0), default=2.0,
              show_default=True, help="Privacy loss of the two training releases (G and b) together.")
@click.option("--evaluation-epsilon", type=click.FloatRange(min=0.0, min_open=True, max=100.0), default=0.6,
              show_default=True, help="Privacy loss of the evaluation releases together.")
def suffstats_demo_command(work_dir: Path, training_epsilon: float, evaluation_epsilon: float) -> None:
    """Score by noisy sufficient statistics over a `pplink demo` folder (CKKS; two DP releases; a model card).

    Shows the label owner's own-feature model beside the federated one and says plainly when
    linking did not help.
    """
    from pplink.agreement import load_agreement
    from pplink.lab.scoring_run import demo_settings, run_suffstats_demo

    config = load_agreement(work_dir / "agreement.toml")
    settings = demo_settings(config, training_epsilon=training_epsilon, evaluation_epsilon=evaluation_epsilon)
    summary = run_suffstats_demo(work_dir, config, settings=settings)
    for line in summary.lines:
        click.echo(line)
