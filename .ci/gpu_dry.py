#!/usr/bin/env python
"""The second half of the GPU session's dry run: every python command its steps
recorded (``.ci/gpu_dry_py.sh`` stood in for python), run here in one process.

    python .ci/gpu_dry.py PLAN_DIR LOGS_DIR

Each command runs as ``python`` would run it (``-m module``, ``-c code`` or a
script, with its ``sys.argv`` and folder), in the checking form the session gave
it in a dry run (pytest --collect-only, a script's --dry-run or --help); its
output is appended to LOGS_DIR/STEP.log, where the session's summary reads it.
One process imports torch, fastrnn and pytest once instead of once per command:
that is what keeps the dry run within a minute on a 2-core CI machine.

Prints one line per command: step, exit status, the command.  An exception is
printed with its Traceback into the step's log (the session fails a dry run on
any Traceback) and counts as exit status 1.
"""
from __future__ import annotations

import os
import runpy
import sys
import traceback


def run(argv: list[str]) -> int:
    """Exit status of ``python *argv`` run in this process."""
    sys.argv = list(argv)
    # sys.path[0] as python sets it: the script's folder, else the current one
    sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])) if argv[0] not in ("-m", "-c") else "")
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1]] + argv[2:]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        elif argv[0] == "-c":
            sys.argv = ["-c"] + argv[2:]
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
        else:
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001  (reported in the log, judged by the session)
        traceback.print_exc()
        return 1
    return 0


def main() -> int:
    plan, logs = sys.argv[1:3]
    home, path = os.getcwd(), list(sys.path)
    results = []
    for name in sorted(os.listdir(plan)):
        parts = [p.decode() for p in open(os.path.join(plan, name), "rb").read().split(b"\0")[:-1]]
        step, cwd, argv = parts[0], parts[1], parts[2:]
        with open(os.path.join(logs, f"{step}.log"), "ab") as log:
            log.write(f"\n$ python {' '.join(argv)}\n".encode())
            log.flush()
            # the command's output, its subprocesses' and pytest's own fd capture
            # included, into the step's log: fds 1 and 2 pointed there for its run
            sys.stdout.flush(), sys.stderr.flush()
            saved = os.dup(1), os.dup(2)
            os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
            try:
                os.chdir(cwd)
                rc = run(argv)
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os.dup2(saved[0], 1), os.dup2(saved[1], 2)
                os.close(saved[0]), os.close(saved[1])
                os.chdir(home)
                sys.path[:] = path  # a script's own sys.path additions end with it
        results.append((step, rc, " ".join(argv)))
    for step, rc, cmd in results:
        print(f"{step}\t{rc}\t{cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
