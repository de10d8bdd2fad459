"""One generation of the embedded engine, served by a process of its own.

Why a process: qdrant-edge holds the GIL for the whole of every call, loading a generation
(0.1-0.4 s at 100k points) and closing one (0.15-0.5 s) included. In the serving process those
calls stalled every request that came meanwhile (docs/search.md). Here the serving process only
sends requests over a socket: a new generation loads in a new process while the old one still
answers, and the old one closes in its own time, after the swap.

    python shard.py ENGINE_FOLDER --dimension D --metric M --optimize-after N --fd F --parent PID

The two ends talk over a socket pair with multiprocessing's Connection (pickles). A request is
a tuple (method, *arguments) of qdrant_engine.Engine; the answer ("ok", value) or ("failed",
message); the first answer says whether the engine loaded (and warmed: a few searches bring
its pages in before requests come). ("close",) or the end of the socket closes the engine, at
low priority, and ends the process, and so does the end of the process that started it.

Started from the export package, the child runs as `python -m export.steps.index.shard`;
started from the copy beside model.py, as that copy: the classes that cross (Filter, Hits,
Position) are then the same on both ends.

Imports nothing of the project but its neighbours: it is copied beside model.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

if __package__:
    from export.steps.index.processes import child_environment, die_with_parent, lower_priority, python_interpreter
else:
    from processes import child_environment, die_with_parent, lower_priority, python_interpreter

CLOSE_TIMEOUT = 120.0  # seconds a closing engine may take to write its files before it is killed


class ShardFailed(RuntimeError):
    """The engine's process failed a request: a fault of the server, not of the request."""


class ShardEnded(ShardFailed):
    """The engine's process is gone (killed, crashed): start another."""


def _command(python: str | None) -> list[str]:
    """How to start this module: from the package or from its copy, as this process has it."""
    interpreter = python_interpreter(python)
    return [interpreter, "-m", f"{__package__}.shard"] if __package__ else [interpreter, str(Path(__file__))]


class ShardProcess:
    """The serving process's end: one engine process, its requests answered in order."""

    def __init__(self, engine: Path, dimension: int, metric: str, optimize_after: int, python: str | None) -> None:
        """Start the process, which loads the engine in `engine` (the first answer, `receive()`)."""
        ours, theirs = socket.socketpair()
        with ours, theirs:
            arguments = [str(engine), "--dimension", str(dimension), "--metric", metric]
            arguments += ["--optimize-after", str(optimize_after), "--fd", str(theirs.fileno())]
            arguments += ["--parent", str(os.getpid())]
            self.process = subprocess.Popen(
                [*_command(python), *arguments], stdin=subprocess.DEVNULL, env=child_environment(),
                pass_fds=(theirs.fileno(),),
            )  # fmt: skip
            self.connection = Connection(ours.detach())
        self.pid = self.process.pid

    def send(self, method: str, *arguments: Any) -> None:
        """Ask without waiting; `receive()` gets the answers in order."""
        try:
            self.connection.send((method, *arguments))
        except OSError as error:
            raise self._ended(error) from None

    def answered(self) -> bool:
        """Whether the next answer is there (without waiting)."""
        try:
            return self.connection.poll(0)
        except OSError:
            return True  # receive() says what happened

    def receive(self) -> Any:
        try:
            status, value = self.connection.recv()
        except (EOFError, OSError) as error:
            raise self._ended(error) from None
        if status != "ok":
            raise ShardFailed(value)
        return value

    def call(self, method: str, *arguments: Any) -> Any:
        self.send(method, *arguments)
        return self.receive()

    def _ended(self, error: BaseException) -> ShardEnded:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        return ShardEnded(f"the engine's process {self.pid} ended (exit code {code}; {type(error).__name__})")

    def close(self, wait: bool = True) -> None:
        """Let the process close its engine and end; with `wait`, until it has."""
        with contextlib.suppress(OSError):
            self.connection.send(("close",))
        self.connection.close()
        if wait:
            try:
                self.process.wait(timeout=CLOSE_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if not self.connection.closed:
            self.connection.close()
        self.process.kill()
        self.process.wait()

    def ended(self) -> bool:
        return self.process.poll() is not None


# --- the engine's end ------------------------------------------------------------------------


def serve(connection: Connection, engine: Any) -> None:
    """Answer requests until told to close or the other end goes."""
    while True:
        try:
            method, *arguments = connection.recv()
        except (EOFError, OSError):
            return
        if method == "close":  # retired: its flush and unmapping yield to the engine that serves now
            lower_priority()
            return
        try:
            value = getattr(engine, method)(*arguments)
        except Exception as error:  # the serving process fails that request and goes on
            connection.send(("failed", f"engine {method}: {type(error).__name__}: {error}"))
        else:
            connection.send(("ok", value))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("engine", type=Path, help="a generation's engine folder")
    parser.add_argument("--dimension", type=int, required=True)
    parser.add_argument("--metric", required=True)
    parser.add_argument("--optimize-after", type=int, required=True)
    parser.add_argument("--fd", type=int, required=True, help="this end of the socket pair")
    parser.add_argument("--parent", type=int, required=True, help="the serving process: this one ends with it")
    args = parser.parse_args(argv)
    die_with_parent()
    if os.getppid() != args.parent:  # it ended before this process could ask to follow it
        return 1
    if __package__:
        from export.steps.index.qdrant_engine import Engine
    else:
        from qdrant_engine import Engine
    connection = Connection(args.fd)
    try:
        engine = Engine(args.engine, args.dimension, args.metric, args.optimize_after)
        engine.warm()
    except Exception as error:
        connection.send(("failed", f"loading {args.engine}: {type(error).__name__}: {error}"))
        return 1
    connection.send(("ok", None))
    try:
        serve(connection, engine)
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
