"""``python -m dsnet.study COMMAND STUDY``: a study's stages, run by Hydra's launchers.

    python -m dsnet.study plan fashion_mnist --runs-dir DIR      # each stage's command, its runs' state
    python -m dsnet.study run fashion_mnist --runs-dir DIR --workers 2   # the stages in order (joblib)
    python -m dsnet.study run fashion_mnist --runs-dir DIR --launcher slurm -- hydra.launcher.partition=cpu
    python -m dsnet.study choose fashion_mnist --runs-dir DIR    # the lr the search chose, or its next grid
    python -m dsnet.study match fashion_mnist --cost params      # the equal-cost width (latency: timed)
    python -m dsnet.study evaluate fashion_mnist --runs-dir DIR  # eval.py on every finished run: <run>/eval
    python -m dsnet.study collect fashion_mnist --runs-dir DIR   # DIR into results/<study>/{runs,curves}.csv

STUDY is a file of ``configs/study/`` or a path to a study YAML; ``collect`` takes any name (the
folder ``results/<name>/`` it writes), so a sweep run without a study config collects too, e.g.
``python -m dsnet.study collect cifar10 --runs-dir /path/to/cifar10_runs``; the runs it finds replace
their rows there, and the rows of runs not under ``--runs-dir`` stay (``--replace`` drops them).
``run`` runs each stage's ``train.py -m`` command to its end, then the next; stopped at any point,
the same command resumes (finished jobs are skipped, partial ones continue from their last
checkpoint). It stops after the search stage when the search's choice is not what the experiment
config holds (``choose`` says what to write there), and leaves out stages that need a GPU on a
machine without one. Overrides after ``--`` go to every stage (``trainer.max_epochs=1`` for a smoke
run, SLURM settings).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections import Counter
from pathlib import Path

from dsnet.config import register_resolvers
from dsnet.report.discover import ReportInputError
from dsnet.study.lr import choose_lr, search_scores
from dsnet.study.stages import (
    LAUNCHERS,
    ROOT,
    STUDY_DIR,
    Study,
    launcher_overrides,
    load_study,
    run_dirs,
    run_stage,
    stage_command,
    state_counts,
    unfinished_lines,
)

PROG = "python -m dsnet.study"


class StudyError(Exception):
    """What was wrong, one line; exit status 1."""


def tuned_block(study: Study) -> dict:
    """The ``tuned:`` block of the experiment config the search stage runs."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    experiment = [o for o in study.stage(study.search).overrides if o.startswith("experiment=")]
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=experiment)
    return OmegaConf.to_container(cfg.get("tuned") or OmegaConf.create({}), resolve=False)


def choice_lines(study: Study, runs_dir: Path) -> tuple[bool, list[str]]:
    """Whether the experiment config holds the search's choice, and what to say about it."""
    scores, unfinished = search_scores(runs_dir / study.search)
    if unfinished or not scores:
        raise StudyError(f"the {study.search} stage has {len(unfinished)} unfinished trials under "
                         f"{runs_dir / study.search} (run it: {PROG} run {study.name} --runs-dir {runs_dir})")
    choice = choose_lr(scores, study.base_grid or sorted(next(iter(scores.values()))), study.max_grow)
    if choice.chosen is None:
        grid = ",".join(f"{lr:g}" for lr in choice.grid)
        return False, [f"an arm's best lr is at an edge of the grid: the search grows to optim.optimizer.lr: {grid}",
                       f"(set it in the search's hparams_search config and run the {study.search} stage again)"]
    block = {arm: {"lr": c["lr"], "lr_trials": c["trials"], "lr_grid": c["grid"]} for arm, c in choice.chosen.items()}
    lines = ["tuned:"] + [f'  {arm}: {{lr: {c["lr"]:g}, lr_trials: {c["lr_trials"]}, lr_grid: "{c["lr_grid"]}"}}'
                          for arm, c in sorted(block.items())]
    lines += [f"# {arm}: val/acc_best {c['val_acc_best']:.4f}" + (" (at an edge of the grid)" if c["at_edge"] else "")
              for arm, c in sorted(choice.chosen.items())]
    held = tuned_block(study)
    same = all({k: held.get(arm, {}).get(k) for k in c} == c for arm, c in block.items())
    lines.append("the experiment config holds this choice" if same else
                 "the experiment config's tuned: block differs: write the block above into it")
    return same, lines


def cmd_plan(study: Study, args: argparse.Namespace) -> int:
    launcher = launcher_overrides(args.launcher, args.workers)
    for stage in study.stages:
        runs = run_dirs(args.runs_dir / stage.name)
        state = state_counts(runs)
        print(f"{stage.name}: {state['finished']} finished, {state['partial']} partial, {state['failed']} failed"
              + (" (needs a GPU)" if stage.gpu else ""))
        for line in unfinished_lines(runs):
            print("  " + line)
        print("  " + " ".join(stage_command(stage, args.runs_dir, launcher, args.overrides)[1:]))
    return 0


def cmd_run(study: Study, args: argparse.Namespace) -> int:
    launcher = launcher_overrides(args.launcher, args.workers)
    stages = [study.stage(args.stage)] if args.stage else study.stages
    has_gpu = None
    for stage in stages:
        if stage.gpu and args.launcher == "joblib":
            if has_gpu is None:
                import torch  # lazy: only a GPU stage asks

                has_gpu = torch.cuda.is_available()
            if not has_gpu:
                print(f"{stage.name}: left out, its jobs need a GPU and this machine has none", flush=True)
                continue
        print(f"{stage.name}: {' '.join(stage_command(stage, args.runs_dir, launcher, args.overrides)[1:])}", flush=True)
        if run_stage(stage, args.runs_dir, launcher, args.overrides, args.threads) != 0:
            raise StudyError(f"stage {stage.name} failed (see the jobs' logs under {args.runs_dir / stage.name}); "
                             "the same command resumes it")
        if stage.name == study.search and not args.stage:
            same, lines = choice_lines(study, args.runs_dir)
            print("\n".join(lines), flush=True)
            if not same:
                return 1
    return 0


def cmd_choose(study: Study, args: argparse.Namespace) -> int:
    if study.search is None:
        raise StudyError(f"study {study.name!r} has no search stage")
    same, lines = choice_lines(study, args.runs_dir)
    print("\n".join(lines))
    return 0 if same else 1


def _latency_ms(net, shape: tuple[int, int, int], min_run_time: float) -> float:
    from dsnet.latency import measure_latency

    return measure_latency(net, shape, num_threads=1, min_run_time=min_run_time)["latency_ms_p50"]


def cmd_match(study: Study, args: argparse.Namespace) -> int:
    """The width of the study's ``match`` conv at its target's cost; a latency match (timed, 1
    thread, batch 1, fp32: run it on an idle machine) is recorded in ``results/<study>/``."""
    from dsnet import allocator
    from dsnet.matching import match_width
    from dsnet.environment import environment

    if not study.match:
        raise StudyError(f"study {study.name!r} has no `match:` block (conv, target_conv, target_width, input)")
    m = study.match
    net_input = {k: m[k] for k in ("arch", "image_size", "num_classes", "in_chans")}
    cost = args.cost
    if args.cost == "latency":
        allocator.configure("keep_freed")  # as eval.py times: freed memory kept, no page faults per pass
        shape = (m["in_chans"], m["image_size"], m["image_size"])
        cost = functools.partial(_latency_ms, shape=shape, min_run_time=args.min_run_time)

    found = match_width(m["conv"], m["target_conv"], m["target_width"], cost=cost,
                        tolerance=0.05 if args.cost == "latency" else 0.02, max_width=1.0, **net_input)
    record = {**vars(found), "cost_name": args.cost, **net_input,
              "environment": environment("cpu", 1) if args.cost == "latency" else None}
    if args.cost == "latency":
        from dsnet.results import write_json_atomic

        (args.results / study.name).mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.results / study.name / "latency_match.json", record)
    print(json.dumps(record, indent=2))
    return 0


def cmd_evaluate(study: Study, args: argparse.Namespace) -> int:
    from dsnet.study.evaluate import EVAL_DIR, evaluate_run, to_evaluate

    failed = 0
    for stage in [study.stage(args.stage)] if args.stage else study.stages:
        todo = to_evaluate(stage, args.runs_dir)
        for i, run_dir in enumerate(todo, 1):
            status = evaluate_run(stage, run_dir)
            failed += status != 0
            print(f"eval {stage.name} {i}/{len(todo)} {run_dir.name}: "
                  + ("no best checkpoint" if status == 1 and not (run_dir / f"{EVAL_DIR}.log").is_file()
                     else f"exit {status}"), flush=True)
    if failed:
        raise StudyError(f"{failed} evaluations failed (see <run>/{EVAL_DIR}.log)")
    return 0


def cmd_collect(study: Study, args: argparse.Namespace) -> int:
    from dsnet.study.collect import write_study

    out = args.results / study.name
    done = write_study(args.runs_dir, out, replace=args.replace)
    for run_dir, reason in done.missing:
        print(f"no results: {run_dir}: {reason}")
    if done.kept:
        stages = Counter(row.get("stage") or row["run"].split("/")[0] for row in done.kept)
        print(f"kept {len(done.kept)} row{'s' * (len(done.kept) != 1)} of {out / 'runs.csv'} whose runs are not under {args.runs_dir} ("
              + ", ".join(f"{stage} {n}" for stage, n in sorted(stages.items())) + "); --replace drops them")
    print(f"wrote {out / 'runs.csv'} ({done.runs} runs collected, {len(done.kept)} kept) and "
          f"{out / 'curves.csv'} ({done.epochs} epochs)")
    return 0


COMMANDS = {"plan": cmd_plan, "run": cmd_run, "choose": cmd_choose, "match": cmd_match, "evaluate": cmd_evaluate,
            "collect": cmd_collect}


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                     epilog="Arguments after -- are Hydra overrides for every stage.")
    parser.add_argument("command", choices=list(COMMANDS))
    parser.add_argument("study", help="a study of configs/study/ (fashion_mnist) or a study YAML file")
    parser.add_argument("--runs-dir", type=Path, help="where the stages' runs go: <dir>/<stage>/<job> (all but match)")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="joblib")
    parser.add_argument("--workers", type=positive_int, default=1, help="joblib: jobs at once (default 1)")
    parser.add_argument("--threads", type=positive_int, default=1, help="intra-op threads per job (default 1)")
    parser.add_argument("--stage", help="run, evaluate: this stage only")
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="collect, match --cost latency: where study folders go (default: results)")
    parser.add_argument("--replace", action="store_true",
                        help="collect: rows of runs not under --runs-dir are dropped (default: kept)")
    parser.add_argument("--cost", choices=("params", "macs", "latency"), default="params", help="match: the cost")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="match --cost latency: seconds per timing")
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)  # after --: overrides for every stage
    args = parser.parse_args(argv[:split])
    args.overrides = argv[split + 1:]
    if args.runs_dir is None and args.command != "match":
        parser.error(f"{args.command} needs --runs-dir DIR (where the stages' runs are)")
    args.runs_dir = args.runs_dir.resolve() if args.runs_dir else None
    register_resolvers()  # the experiment configs composed below use ${dsnet.*}
    try:
        if args.command == "collect" and not args.study.endswith(".yaml") and not (STUDY_DIR / f"{args.study}.yaml").is_file():
            study = Study(args.study, [])  # any runs dir of <stage>/<job> directories collects, configured or not
        else:
            study = load_study(args.study)
        return COMMANDS[args.command](study, args)
    except (StudyError, ReportInputError, ValueError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
