"""``ml4m learn``: on-the-fly active learning with a reference ASE calculator."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator

HELP = "on-the-fly active learning: MD with an uncertain model, the reference where unsure"
DESCRIPTION = """\
MD walkers share one model with uncertainty; every check_interval steps, a walker whose
largest predicted force sigma is above the threshold sends its frame to the reference
calculator, the frame joins the training set and the model is updated (an exact rank
update for ace and gp; hyperparameters re-optimised every reoptimise_every calls, when a
calibrated model also refits its error models on the labelled frames as it predicted them
before learning them). A threshold in eV/A is set against the model's sigma (calibrated
when it is: a target force error); a relative one ("2x": twice the model's fitted force
noise) against its posterior sigma (the data's part of the uncertainty, which labelling
reduces; FLARE's convention). The
frames of a round are labelled in parallel (--workers processes, or a Dask scheduler)
and added in walker order, so the result does not depend on the number of workers.

A new initial fit (fit:, with initial:) is what ml4m fit makes of the same keys: an ace
or gp fit without descriptor settings chooses its basis on the initial frames (CV, MD
probe). Updates keep the basis: the fit is made again on every frame each time the
training set has grown by refit_growth (default 2), and at the end, so DIR/model.ml4m is
the fit of DIR/train.extxyz; between, a labelled frame with a pair closer than the basis
reaches (its pair_r_in) refits the same basis with inner radii from every frame.

A starting model file (model: start.ml4m) is used as it is and needs initial: the
frames it was fitted on (its normal equations are rebuilt from them, or, for a committee,
it is refitted on them and the new frames at each update). A new initial fit (fit:, with
initial:) may be a committee of networks (fit: {model: mpnn, committee: K}): K networks
of seeds seed..seed+K-1 as ml4m fit --committee K trains them, their spread not
calibrated (the loop holds no held-out frames).

DIR holds, after every update, state/ (model, normal equations, training set, walkers,
random-generator states) and DIR/train.extxyz (new frames appended); a killed run
continues with --resume (refused under other settings). At the end: DIR/model.ml4m and
DIR/learning.png (sigma and reference calls against MD time). A live table on stderr
shows the rounds.

CONFIG.yaml:
  reference: emt                     # or {calculator: pkg.module:Class, kwargs: {...}}
  fit: {model: ace, descriptor: {r_cut: 4.5, n_max: 6, l_max: 3}}   # or model: start.ml4m
  initial: start_frames.extxyz       # frames of the initial fit (or of model's fit)
  label_initial: true                # labelled by the reference first
  walkers:
    - {structure: cu108.extxyz, temperature: 300, temperature_end: 1500, seed: 0}
  ensemble: nvt                      # nve, nvt, npt
  steps: 5000
  dt: 2.0                            # fs
  threshold: 0.1                     # eV/A, or "2x": posterior sigma against 2x the fitted noise
  check_interval: 10
  min_steps_between_calls: 50        # a walker waits 50 steps after its call
  max_calls: 100
  reoptimise_every: 2                # 0: never
  refit_growth: 2                    # fit again (basis search too) as the set doubles; 0: never
  on_reference_error: stop           # or skip

examples:
  ml4m learn learn.yaml -o learn_out
  ml4m learn learn.yaml -o learn_out --workers 4
  ml4m learn learn.yaml -o learn_out --resume
  ml4m learn learn.yaml -o learn_out --scheduler tcp://head-node:8786 --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ml4m.cli._common import add_output_arguments

    p.add_argument("config", metavar="CONFIG.yaml", help="settings of the loop (see above)")
    add_output_arguments(p, "DIR", "output folder (state, model, training set, plot)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes labelling frames at once (default 1: in this process)")
    p.add_argument("--scheduler", metavar="ADDR",
                   help="label through the Dask scheduler at ADDR (tcp://host:8786; needs the "
                        "'distributed' package)")
    p.add_argument("--scheduler-timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the scheduler to answer (default 10)")
    p.add_argument("--resume", action="store_true", help="continue the state saved in DIR")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _row_text(status) -> str:
    """One log line of a :class:`~ml4m.md.learning.LearnStatus`."""
    sigmas = " ".join(f"{s:.4f}" for s in status.sigma)
    line = (f"step {status.step:>7}/{status.steps}  t {status.time_ps:8.3f} ps  max sigma_F "
            f"[{sigmas}] / {status.threshold:.4f} eV/A  calls {status.calls}/{status.max_calls}  "
            f"train {status.n_train}  params {status.n_parameters}")
    if status.labelled:
        line += f"  labelled walker(s) {list(status.labelled)}"
    return line


def _table(status):
    """The live table: one row per walker, the loop's counters in the caption."""
    from rich.table import Table

    table = Table(title=f"ml4m learn: step {status.step}/{status.steps} "
                        f"({status.time_ps:.3f} ps), round {status.rounds}",
                  caption=f"reference calls {status.calls}/{status.max_calls} (skipped "
                          f"{status.skipped}), training frames {status.n_train}, model "
                          f"{status.n_parameters} parameters")
    for name in ("walker", "max force sigma (eV/A)", "threshold (eV/A)", "this round"):
        table.add_column(name, justify="right")
    for k, s in enumerate(status.sigma):
        flag = "labelled" if k in status.labelled else ""
        style = "bold" if s > status.threshold else ""
        table.add_row(str(k), f"{s:.4f}", f"{status.threshold:.4f}", flag, style=style)
    return table


@contextlib.contextmanager
def live_report(live: bool, every: int) -> Iterator[Callable]:
    """``on_round`` for :func:`~ml4m.md.learning.run_learning`: a rich live table on stderr
    when ``live``, else a log line on rounds that labelled frames and every ``every``
    rounds."""
    from ml4m.cli._common import console

    err = console(stderr=True)
    if not live:
        def log(status) -> None:
            if status.labelled or status.rounds % every == 0 or status.step == status.steps:
                err.print(_row_text(status), soft_wrap=True)
        yield log
        return
    from rich.live import Live

    with Live(console=err, transient=False, refresh_per_second=4) as view:
        yield lambda status: view.update(_table(status))


def run(args: argparse.Namespace) -> int:
    import math
    from pathlib import Path

    from ml4m.cli._common import emit
    from ml4m.config import load_yaml
    from ml4m.md.learning import reference_executor, run_learning
    from ml4m.md.learning_settings import LearnSettings
    from ml4m.md.learning_state import FOLDER_KIND
    from ml4m.outputs import claim_output

    settings = LearnSettings.from_mapping(load_yaml(args.config), source=args.config)
    inputs = [args.config, settings.model, settings.initial] + [w.structure for w in settings.walkers]
    inputs = [p for p in inputs if p is not None and Path(p).exists()]
    rounds = math.ceil(settings.steps / settings.check_interval)
    with claim_output(args.output, inputs=inputs, folder_kind=FOLDER_KIND,
                      overwrite=args.overwrite) as out:
        with reference_executor(args.workers, args.scheduler, args.scheduler_timeout) as executor, \
                live_report(not args.json and sys.stderr.isatty(), max(1, rounds // 20)) as on_round:
            result = run_learning(settings, out, executor=executor, resume=args.resume,
                                  overwrite=args.overwrite, on_round=on_round)
    emit(args.json, result,
         f"{result['steps']} MD steps x {result['walkers']} walker(s) in {result['seconds']:.1f} s: "
         f"{result['reference_calls']} reference calls ({result['skipped']} skipped), "
         f"{result['n_train']} training frames; model {result['model']}, plot {result['plot']}")
    return 0
