"""The coordinator's Flower ServerApp: a thin adapter over :mod:`coordinator.flower_round`.

It reads the round settings from the run config that ``pplink coordinator run`` passes, runs
:func:`coordinator.flower_round.run_linkage_round` against the SuperLink's Grid and logs to the
run's log (``<state>/runs/<run_id>.log``) and to Flower's log stream (``flwr run --stream``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from coordinator.flower_round import run_linkage_round, settings_from_run_config
from coordinator.run_records import runs_dir

__all__ = ["app"]

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one pplink match round."""
    settings = settings_from_run_config(context.run_config, flower_run_id=context.run_id)
    log_path = runs_dir(settings.state_dir) / f"{settings.run_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        print(f"pplink {stamp} {line}", flush=True)
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {line}\n")

    run_linkage_round(grid, settings, log=log)
