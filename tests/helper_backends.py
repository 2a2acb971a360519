"""Small backends for the conformance-core tests: one correct, the rest misbehaving on purpose.

They are named in tests as ``<this file>:<attr>`` (see :data:`SPEC_PREFIX`) so that a spawned worker
process imports them from the file, exactly as a user's unseen backend would be loaded.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

SPEC_PREFIX = str(Path(__file__).resolve()) + ":"

# Scales that make :class:`Selective` misbehave (every other scale gets a correct answer).
CRASH_SCALE = 101.0
HANG_SCALE = 102.0
RAISE_SCALE = 103.0


def correct_attention(q, k, v, scale):
    """Row-max-shifted softmax attention in float64 (the textbook computation)."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    logits = scale * (q @ k.T)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)) @ v


class Correct:
    """A correct float64 backend (declares float64 only)."""

    capabilities = {"problems": {"softmax_attention"}, "dtypes": {"float64"}}

    def attention(self, q, k, v, *, scale):
        return correct_attention(q, k, v, scale)


class IgnoresScale:
    """Broken: forgets the scale (computes softmax(QKᵀ) V)."""

    capabilities = {"problems": {"softmax_attention"}, "dtypes": {"float64"}}

    def attention(self, q, k, v, *, scale):
        return correct_attention(q, k, v, 1.0)


class Raising:
    """Raises on every call."""

    def attention(self, q, k, v, *, scale):
        raise RuntimeError("helper backend refuses to compute")


class Crashing:
    """Kills its own process on every call (as a segfault would)."""

    def attention(self, q, k, v, *, scale):
        os._exit(13)


class Hanging:
    """Never answers in any reasonable time."""

    def attention(self, q, k, v, *, scale):
        time.sleep(3600)


class Sleepy:
    """Answers correctly, but only after ``delay`` seconds."""

    delay = 0.3

    def attention(self, q, k, v, *, scale):
        time.sleep(self.delay)
        return correct_attention(q, k, v, scale)


class Selective:
    """Correct, except for three magic scales: crash, hang, raise (to test recovery in one worker)."""

    def attention(self, q, k, v, *, scale):
        if scale == CRASH_SCALE:
            os._exit(7)
        if scale == HANG_SCALE:
            time.sleep(3600)
        if scale == RAISE_SCALE:
            raise ValueError("magic scale 103")
        return correct_attention(q, k, v, scale)


class ShapeTriggered:
    """Correct, except: crashes when Q is 1×5 and hangs when Q is 7×1 (two cases of the quick profile's
    degenerate family), so a full run must lose exactly those cases and nothing else."""

    capabilities = {"problems": {"softmax_attention"}, "dtypes": {"float64"}}

    def attention(self, q, k, v, *, scale):
        if q.shape == (1, 5):
            os._exit(9)
        if q.shape == (7, 1):
            time.sleep(3600)
        return correct_attention(q, k, v, scale)


def _garbage(make):
    class Garbage:
        def attention(self, q, k, v, *, scale):
            return make(correct_attention(q, k, v, scale))

    return Garbage


def _with_nan(y):
    y = y.copy()
    y.flat[-1] = np.nan
    return y


def _with_inf(y):
    y = y.copy()
    y.flat[0] = np.inf
    return y


# name -> backend class returning garbage derived from the correct answer y
GARBAGE = {
    "nan": _garbage(_with_nan),
    "inf": _garbage(_with_inf),
    "wrong_shape": _garbage(lambda y: y.T.copy() if y.shape[0] != y.shape[1] else y[:, :-1] if y.shape[1] > 1 else np.zeros((y.shape[0] + 1, 1))),
    "extra_axis": _garbage(lambda y: y[None]),
    "complex": _garbage(lambda y: y.astype(np.complex128)),
    "strings": _garbage(lambda y: y.astype(str)),
    "object": _garbage(lambda y: np.array(y.tolist(), dtype=object)),
    "none": _garbage(lambda y: None),
    "scalar": _garbage(lambda y: 0.5),
}

# Module-level names, so that each garbage backend can be named as "<file>:Garbage_<name>".
for _name, _cls in GARBAGE.items():
    _cls.__name__ = _cls.__qualname__ = f"Garbage_{_name}"
    globals()[_cls.__name__] = _cls


class Noisy:
    """Correct, but prints while loading and on every call (Python-level and straight to fds 1 and 2)."""

    capabilities = {"problems": {"softmax_attention"}, "dtypes": {"float64"}}

    def __init__(self):
        print("noisy backend loading")

    def attention(self, q, k, v, *, scale):
        print("noisy stdout line")
        os.write(2, b"noisy fd-2 line\n")
        return correct_attention(q, k, v, scale)


class Nondeterministic:
    """Nearly correct, but the last bit of one entry alternates between calls (as an atomic-add
    reduction's order would make it)."""

    capabilities = {"problems": {"softmax_attention"}, "dtypes": {"float64"}, "deterministic": True}

    def __init__(self):
        self.calls = 0

    def attention(self, q, k, v, *, scale):
        self.calls += 1
        y = correct_attention(q, k, v, scale)
        if self.calls % 2 == 0:
            y.flat[0] = np.nextafter(y.flat[0], np.inf)
        return y


class AlwaysNaN:
    """Returns NaNs of the answer's shape on every call (deterministically)."""

    def attention(self, q, k, v, *, scale):
        return np.full((q.shape[0], v.shape[1]), np.nan)


class SpawnsSleeper:
    """Correct, but leaves a ``sleep 60`` child running after each call (for the orphan tests)."""

    capabilities = {"problems": {"softmax_attention"}, "dtypes": {"float64"}}

    def attention(self, q, k, v, *, scale):
        import subprocess

        subprocess.Popen(["sleep", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return correct_attention(q, k, v, scale)


def live_processes(keep) -> list[int]:
    """Pids of the live (not zombie) processes for which ``keep(pid, stat_fields)`` holds (from /proc;
    ``stat_fields`` are the fields after the command name: state, ppid, pgrp, …)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[0] not in ("Z", "X") and keep(int(entry), fields):
                found.append(int(entry))
        except OSError:  # the process ended while we looked
            continue
    return found


def live_group_members(pgid: int) -> list[int]:
    """Pids of the processes in process group ``pgid`` that are not zombies."""
    return live_processes(lambda pid, fields: int(fields[2]) == pgid)


def _environment_holds(pid: int, marker: str) -> bool:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return marker.encode() in f.read()


def live_marked_processes(marker: str) -> list[int]:
    """Pids of the live processes whose environment holds ``marker`` (children inherit it)."""
    return live_processes(lambda pid, fields: _environment_holds(pid, marker))


def group_is_gone(pgid: int, within: float = 10.0) -> bool:
    """Whether process group ``pgid`` has no live member, waiting up to ``within`` seconds for SIGKILLs
    already sent to be delivered (a kill is asynchronous; the deadline is a bound, not a measurement)."""
    deadline = time.monotonic() + within
    while live_group_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class EnvironmentProbe:
    """Answers with the length of ``$ATTNSPEC_ENV_PROBE`` in every entry (to see the worker's
    environment); crashes on :data:`CRASH_SCALE` (to force a restart)."""

    capabilities = {"problems": {"softmax_attention"}, "dtypes": {"float64"}}

    def attention(self, q, k, v, *, scale):
        if scale == CRASH_SCALE:
            os._exit(3)
        return np.full((q.shape[0], v.shape[1]), float(len(os.environ.get("ATTNSPEC_ENV_PROBE", ""))))
