"""Fuzzing helpers: the allowed outcomes, a per-example time limit, byte and text mutations.

Every fuzz test feeds a mutated (but small) input to a reader and asserts that the
outcome is success or :class:`ml4m.errors.DataError` / :class:`ConfigError`: any other
exception, or a run past :data:`LIMIT_S` seconds (a hang), fails the example.
Hypothesis runs derandomized (the same examples on every run) with no example database.
The examples run in a forked child (:func:`fuzz`): a crash of native code (a signal)
fails the test and shows the input, instead of ending the test session.
"""

from __future__ import annotations

import copy
import os
import pickle
import signal
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ml4m.errors import ConfigError, DataError

#: seconds one example may take before it counts as a hang
LIMIT_S = 5

FUZZ = settings(
    max_examples=int(os.environ.get("ML4M_FUZZ_EXAMPLES", "100")),
    derandomize=True,
    database=None,
    deadline=timedelta(seconds=LIMIT_S),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large],
)


class Hang(BaseException):
    """Raised by the alarm; a BaseException so no ``except Exception`` can swallow it."""


@contextmanager
def time_limit(seconds: float = LIMIT_S):
    """Interrupt the block after ``seconds`` (SIGALRM; the main thread of a POSIX process)."""

    def on_alarm(signum, frame):
        raise Hang(f"no result after {seconds} s")

    if not hasattr(signal, "setitimer"):  # no SIGALRM (Windows): hypothesis' deadline only
        yield
        return
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(run: Callable[[], Any]) -> str:
    """Run ``run`` under :func:`time_limit`; return ``'ok'``, ``'DataError'`` or ``'ConfigError'``.

    Any other exception fails the test with the input's traceback; so does a hang.
    """
    try:
        with time_limit():
            run()
    except (DataError, ConfigError) as exc:
        assert str(exc).strip(), "an ml4m error with an empty message"
        return type(exc).__name__
    except Hang as exc:
        pytest.fail(f"hang: {exc}")
    return "ok"


def fuzz(strategy: st.SearchStrategy, check: Callable[[Any], str],
         max_examples: int | None = None) -> Counter:
    """Run ``check`` on examples of ``strategy`` in a forked child; count the outcomes.

    Parameters
    ----------
    strategy : SearchStrategy
        The inputs.
    check : callable
        Runs one input, returns its outcome (see :func:`outcome`).
    max_examples : int, optional
        Examples to run (default: ``FUZZ``'s, ``ML4M_FUZZ_EXAMPLES`` or 100).

    Returns
    -------
    Counter
        Outcome -> number of examples.
    """
    counts: Counter = Counter()
    fd, last = tempfile.mkstemp(suffix=".input")
    os.close(fd)

    @settings(FUZZ, max_examples=max_examples or FUZZ.max_examples)
    @given(strategy)
    def run(example):
        with open(last, "w") as fh:  # shown if the child dies on this input
            fh.write(repr(example)[:3000])
        counts[check(example)] += 1

    if not hasattr(os, "fork"):  # no fork (Windows): in this process
        run()
        os.unlink(last)
        return counts
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, send the counts (or the failure) back, leave at once
        os.close(read)
        try:
            run()
            payload = pickle.dumps(("ok", counts))
        except BaseException:  # noqa: BLE001 - reported by the parent
            payload = pickle.dumps(("failed", traceback.format_exc()))
        with os.fdopen(write, "wb") as fh:
            fh.write(payload)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        payload = fh.read()
    _, status = os.waitpid(pid, 0)
    with open(last) as fh:
        example = fh.read()
    os.unlink(last)
    if os.WIFSIGNALED(status):
        pytest.fail(f"the process crashed (signal {signal.Signals(os.WTERMSIG(status)).name}) "
                    f"on the input {example}", pytrace=False)
    kind, value = pickle.loads(payload)
    if kind == "failed":
        pytest.fail(value, pytrace=False)
    print(f"{sum(value.values())} examples: {dict(value)}")  # shown with pytest -s
    return value


#: values a mutated number, key or setting takes: edge cases of every type
ODD_TEXT = ["nan", "inf", "-inf", "-1", "0", "999999999999", "1e30", "1e400", "-0", "abc", "",
            "T", "1.5.2", "0x10", "\"", "=", ":", "\\", "é", "1,2"]


@st.composite
def mutated_lines(draw, text: str, keys: list[str]) -> str:
    """``text`` after 1-3 line or token mutations (delete, duplicate, swap lines; replace
    a number or key token; insert a blank line)."""
    lines = text.split("\n")
    for _ in range(draw(st.integers(1, 3))):
        if not lines:
            break
        k = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "number", "key", "blank"]))
        if op == "delete":
            del lines[k]
        elif op == "duplicate":
            lines.insert(k, lines[k])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[k], lines[j] = lines[j], lines[k]
        elif op == "blank":
            lines.insert(k, "")
        else:
            tokens = lines[k].replace("=", " = ").replace('"', ' " ').split(" ")
            spots = [i for i, t in enumerate(tokens)
                     if (op == "number" and _is_number(t)) or (op == "key" and t in keys)]
            if not spots:
                continue
            i = draw(st.sampled_from(spots))
            tokens[i] = draw(st.sampled_from(ODD_TEXT + keys))
            lines[k] = " ".join(tokens).replace(" = ", "=").replace(' " ', '"')
    return "\n".join(lines)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


@st.composite
def byte_edits(draw, size: int) -> tuple:
    """A recipe (short, printable) for :func:`apply_byte_edits` on ``size`` bytes: truncate,
    flip a few bytes, or delete or repeat a span."""
    op = draw(st.sampled_from(["truncate", "flip", "delete", "repeat"]))
    if op == "truncate":
        return op, draw(st.integers(0, max(size - 1, 0)))
    if op == "flip":
        return op, draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 255)),
                                 min_size=1, max_size=4))
    a = draw(st.integers(0, size - 1))
    return op, (a, draw(st.integers(a, min(size, a + 64))))


def apply_byte_edits(data: bytes, recipe: tuple) -> bytes:
    """``data`` edited as :func:`byte_edits` drew it."""
    op, arg = recipe
    if op == "truncate":
        return data[:arg]
    if op == "flip":
        out = bytearray(data)
        for pos, value in arg:
            out[pos] = value
        return bytes(out)
    a, b = arg
    return data[:a] + data[b:] if op == "delete" else data[:b] + data[a:b] + data[b:]


#: JSON values a metadata or config entry is replaced with
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**13), 10**13) | st.just(10**400)
    | st.sampled_from([float("nan"), float("inf"), -1.0, 0.0, 1e308, 0.5, 3.0])
    | st.sampled_from(["", "abc", "fit", "ace", "Cu", "energy", "species", "../x"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["a", "r_cut", "energy", "1"]), children, max_size=3),
    max_leaves=8,
)


def leaf_paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Paths (key and index tuples) of every entry of a JSON tree, inner nodes included."""
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += leaf_paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += leaf_paths(v, (*prefix, i))
    return out


def edit_tree(tree: Any, path: tuple, value: Any, delete: bool = False) -> Any:
    """Set (or delete) the entry at ``path`` of a JSON tree in place; return the tree."""
    target = tree
    for k in path[:-1]:
        target = target[k]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = copy.deepcopy(value)  # the recipe keeps its own value
    return tree
