"""``reasonrec``: one command, a verb per job. Every job module in ``jobs/`` owns ``add_arguments(parser)``,
``config(args)`` (its typed config from the flags and the ``--config`` YAML), ``run(config)`` and ``main(argv)``
(for ``python jobs/NAME.py`` / ``ray job submit``); this dispatcher builds the parser from them, prints the
``reasonrec`` log lines, and turns the errors a user can fix into one line and exit code 2."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
from pathlib import Path

# Verb -> job module, in the order of the help text. A module's name must not be one another package imports by its
# top-level name (`requests`, `evaluate`): `python jobs/NAME.py` puts jobs/ first on the path.
VERBS = {
    "synth": "jobs.synth",
    "prepare": "jobs.prepare",
    "train-tools": "jobs.train_tools",
    "finetune-vlm": "jobs.finetune_vlm",
    "fit-planner": "jobs.fit_planner",
    "requests": "jobs.write_requests",
    "score": "jobs.nightly_score",
    "evaluate": "jobs.evaluation",
    "report": "jobs.report",
    "tables": "jobs.paper_tables",
    "serve": "jobs.serve",
    "demo": "jobs.demo",
}
# What a user can fix (input, config, storage, bundle): one line, exit 2. Anything else is a bug: a traceback.
USER_ERRORS = (ValueError, OSError, RuntimeError)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where the flag has one of its own (None: the config's value, which the help names)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def default(cls, path: str):
    """The default of a (nested) config field, for help texts: ``default(ScoreConfig, "deliberator.backend")``."""
    value = cls
    for name in path.split("."):
        field = {f.name: f for f in dataclasses.fields(value)}[name]
        value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    return value


def build_parser() -> argparse.ArgumentParser:
    from reasonrec import __version__

    parser = argparse.ArgumentParser(
        prog="reasonrec", formatter_class=HelpFormatter, epilog="`reasonrec VERB --help` describes each verb; "
        "`make demo` runs them end to end on the synthetic catalogue (README.md).",
        description="Reasoning-augmented multimodal recommendation at scale: prepare data, train the classical "
                    "tools and the VLM deliberator, fit the risk-aware planner, score nightly on Ray Data, "
                    "evaluate, serve with Ray Serve.")
    parser.add_argument("--version", action="version", version=f"reasonrec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB")
    for verb, name in VERBS.items():
        module = importlib.import_module(name)
        summary, _, details = (module.__doc__ or "").strip().partition("\n\n")
        p = sub.add_parser(verb, help=summary, description=(summary + "\n\n" + details).strip(),
                           formatter_class=HelpFormatter)
        add_common(p)
        module.add_arguments(p)
        p.set_defaults(module=module)
    return parser


def add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    group.add_argument("-v", "--verbose", action="store_true", help="debug lines, and a traceback on any error")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return execute(args.module, args, f"reasonrec {args.command}")


def run_module(module, argv: list[str] | None = None) -> int:
    """``main`` of a job module run as a script: its own flags, the same output and errors as its verb."""
    summary = (module.__doc__ or "").strip().split("\n\n")[0]
    prog = module.__name__.rsplit(".", 1)[-1] if module.__name__ != "__main__" else Path(sys.argv[0]).name
    parser = argparse.ArgumentParser(prog=prog, description=summary, formatter_class=HelpFormatter)
    add_common(parser)
    module.add_arguments(parser)
    return execute(module, parser.parse_args(argv), prog)


def execute(module, args: argparse.Namespace, name: str) -> int:
    from reasonrec import logs

    logs.console(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)
    try:
        module.run(module.config(args))
    except USER_ERRORS as e:
        if args.verbose:
            raise
        print(f"{name}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    return 0


def one_line(error: BaseException) -> str:
    """The error's message on one line; for an error raised in a Ray task, its cause's (not the remote traceback)."""
    while getattr(error, "cause", None) is not None and error.cause is not error:
        error = error.cause
    return " ".join(str(error).split()) or type(error).__name__


def ray_init() -> None:
    import ray

    if not ray.is_initialized():
        ray.init()  # joins RAY_ADDRESS when set (ray job submit), else starts a local instance


def log() -> logging.Logger:
    """The jobs' own lines go through the ``reasonrec`` logger, like the library's."""
    return logging.getLogger("reasonrec.jobs")


if __name__ == "__main__":
    sys.exit(main())
