"""The FedMuscle ServerApp: read the run config, run the strategy, write the results."""

from __future__ import annotations

from pathlib import Path

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedmuscle_flwr.config import RunConfig
from fedmuscle_flwr.plots import write_plots
from fedmuscle_flwr.preflight import check_run
from server_app.checkpoint import load_checkpoint
from server_app.fast_grid import wrap_grid
from server_app.strategy import FedMuscleStrategy, RunFailed

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` rounds of FedMuscle and write ``<output-dir>/<run>/``."""
    config = RunConfig.from_run_config(context.run_config)
    grid = wrap_grid(grid, config.grid_poll_interval)  # Flower's HttpGrid polls every 3 s
    if config.resume_from:  # continue that run, in its own directory
        out_dir = Path(config.resume_from).expanduser()
    else:
        out_dir = Path(config.output_dir).expanduser() / f"run-{context.run_id}"
    strategy = FedMuscleStrategy(config, checkpoint_dir=out_dir)
    error: BaseException | None = None
    users: list[str] = []
    try:
        users = [u.id for u in check_run(config).users]  # every user checked before round 1
        if config.resume_from:
            strategy.resume(load_checkpoint(out_dir, config))
            print(
                f"resuming {out_dir} after round {strategy.rounds_before} "
                f"of {config.num_server_rounds}",
                flush=True,
            )
        if strategy.rounds_before < config.num_server_rounds:
            strategy.start(
                grid,
                ArrayRecord(),
                num_rounds=config.num_server_rounds - strategy.rounds_before,
                timeout=config.round_timeout,
            )
    except BaseException as err:
        error = err
        raise
    finally:
        results = strategy.results
        results.finish(users, error)
        path = results.write(out_dir)
        write_plots(results, out_dir)
        print(f"results: {path.resolve()} ({results.status})", flush=True)
    if results.status != "complete":
        raise RunFailed(f"the run failed: {results.reason}")
