"""Builds the ``pplink`` click group and registers one module per command group.

Only this package may import ``nodes`` and ``coordinator``, and only inside command functions,
so that ``pplink`` itself stays importable without either side.
"""

from __future__ import annotations

import json
from typing import Any

import click

from pplink.cli.options import FORMAT_META_KEY
from pplink.errors import PplinkError

__all__ = ["cli"]


class PplinkGroup(click.Group):
    """A click group that turns every :class:`PplinkError` into one stderr line and its exit code.

    This is the single error boundary: library code raises, nothing below prints or exits.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PplinkError as err:
            _report_error(err, ctx.meta.get(FORMAT_META_KEY, "text"))
            ctx.exit(err.exit_code)


def _report_error(err: PplinkError, output_format: str) -> None:
    if output_format == "json":
        click.echo(json.dumps({"error": type(err).__name__, "code": err.code, "message": str(err)}), err=True)
        return
    click.echo(f"error PPL{err.code}: {err}", err=True)
    for note in getattr(err, "__notes__", []):
        click.echo(f"  {note}", err=True)


@click.group(cls=PplinkGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pplink")
def cli() -> None:
    """pplink: link and score records across agencies without pooling them.

    Each agency runs `pplink node …` behind its firewall; the coordinator runs
    `pplink coordinator …`; auditors run `pplink audit …`. Start with `pplink demo`.
    """


def _register() -> None:
    # One module per command group (see STYLE.md §5); imported here so `main` stays the registry.
    from pplink.cli import agreement, audit, coordinator, demo, evaluate, keys, node, release, report, secret, synth

    cli.add_command(agreement.agreement)
    cli.add_command(keys.keys)
    cli.add_command(secret.secret)
    cli.add_command(node.node)
    coordinator.coordinator.add_command(release.release_command, name="release")
    cli.add_command(coordinator.coordinator)
    cli.add_command(demo.demo)
    cli.add_command(synth.synth)
    cli.add_command(evaluate.eval_group, name="eval")
    cli.add_command(audit.audit)
    cli.add_command(report.report)
    from pplink.cli import score

    cli.add_command(score.score_group)
    from pplink.cli import attack

    cli.add_command(attack.attack)


_register()
