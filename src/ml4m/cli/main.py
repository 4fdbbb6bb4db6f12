"""Entry point of the ``ml4m`` command.

Sub-commands live in their own modules (ASE's pattern): each defines ``HELP`` (one
line), ``DESCRIPTION`` (with an example), ``add_arguments(parser)`` and
``run(args) -> int``. Errors derived from :class:`~ml4m.errors.ML4MError` print one
line on stderr and exit with code 2; ``--json`` output is exactly one JSON object on
stdout.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ml4m.errors import ML4MError

__all__ = ["main", "build_parser", "COMMANDS"]

#: (name, module) of every sub-command; modules that do not exist yet are skipped
COMMANDS: list[tuple[str, str]] = [
    ("quickstart", "ml4m.cli.quickstart"),
    ("data", "ml4m.cli.data"),
    ("describe", "ml4m.cli.describe"),
    ("analyze", "ml4m.cli.analyze"),
    ("fit", "ml4m.cli.fit"),
    ("test", "ml4m.cli.test"),
    ("md", "ml4m.cli.md"),
    ("relax", "ml4m.cli.relax"),
    ("learn", "ml4m.cli.learn"),
    ("curate", "ml4m.cli.curate"),
    ("optimize", "ml4m.cli.optimize"),
    ("export", "ml4m.cli.export"),
]


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 2 and a one-line message for usage errors."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``ml4m``: all available sub-commands, or only the one named
    ``only`` (its module alone is imported: a command starts without loading the
    others' dependencies)."""
    from ml4m import __version__

    parser = _Parser(
        prog="ml4m",
        description="ml4m: machine learning for materials. From ab initio data to "
        "descriptors, manifold analysis, fitted potentials and MD.",
        epilog="Start with: ml4m quickstart -o quickstart_out",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ml4m {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module_name in COMMANDS:
        if only is not None and name != only:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        if hasattr(module, "run"):
            p.set_defaults(func=module.run)
    return parser


def _terminate(signum, frame):  # pragma: no cover - exercised through a subprocess test
    """SIGTERM/SIGHUP unwind like Ctrl-C, so temporary files and locks are cleaned up."""
    raise KeyboardInterrupt(f"signal {signum}")


def _user_message(exc: BaseException) -> str:
    """One line for an error the user can act on (an ml4m error, a file system error such
    as a full disk, or exhausted memory)."""
    if isinstance(exc, MemoryError):
        return ("out of memory; use a smaller input, smaller descriptor settings or a machine "
                "with more memory")
    if isinstance(exc, OSError) and not isinstance(exc, ML4MError):
        name = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        return f"cannot access{name}: {exc.strerror or exc}"
    return str(exc)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as one ``ml4m: warning:`` line (no source line, no file path)."""
    return f"ml4m: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ml4m`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    Exit codes: 0 success, 2 a user error (:class:`~ml4m.errors.ML4MError`, a usage
    error, a file system error such as a full disk, or not enough memory), 130 interrupted, 1 an internal error (a bug: one line
    on stderr; the traceback with ``ML4M_DEBUG=1``).
    """
    import os
    import signal
    import threading

    argv = list(sys.argv[1:] if argv is None else argv)
    named = argv[0] if argv and argv[0] in dict(COMMANDS) else None
    parser = build_parser(only=named)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    import warnings

    from ml4m.resources import tune_allocator

    tune_allocator()  # numpy temporaries reused, not faulted in again at every step
    warnings.formatwarning = _format_warning
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
                signal.signal(sig, _terminate)
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("ml4m: interrupted; outputs of this run were not written (finished parts of "
              "resumable runs are kept)", file=sys.stderr)
        return 130
    except (ML4MError, OSError, MemoryError) as exc:  # the user's input or environment
        print(f"ml4m: error: {_user_message(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: one line for the user, the traceback on request
        if os.environ.get("ML4M_DEBUG"):
            raise
        where = exc.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        loc = f" at {where.tb_frame.f_code.co_filename}:{where.tb_lineno}" if where else ""
        print(f"ml4m: internal error: {type(exc).__name__}: {exc}{loc}. This is a bug in ml4m: "
              "please report it with the command you ran (ML4M_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
