"""A catalogue of hostile softmax-attention backends: each misbehaves in one way a runner must survive.

Loaded by tests as ``<this file>:<ClassName>`` (see :data:`SPEC_PREFIX`), every class misbehaves on every
call, as a real broken backend would. :class:`Catalogue` is one backend holding them all: its
``attention(q, k, v, *, scale, hostile=None)`` runs the named class's misbehaviour, or answers correctly
when ``hostile`` is None, so one worker can be checked to lose exactly the hostile calls.

:data:`EXPECTED` says what a runner must report for each: ``"ok"`` (a result, judged later) or the
error kind. Choices worth stating:

- ``RaisesKeyboardInterrupt`` costs its case in a worker (kind ``exception``); in process the runner
  re-raises it, because it cannot tell it from the user's Ctrl-C, which must still stop a run.
- ``SpawnsChild``/``DoubleForks`` answer correctly: spawning is not wrong, but the processes must not
  outlive the runner (its ``close()`` kills the worker's whole process group).
- ``ReturnsNaN`` is an answer (``ok`` at the runner); the judgement calls it an error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # loaded by file path in the worker, too
from helper_backends import correct_attention  # noqa: E402

SPEC_PREFIX = str(Path(__file__).resolve()) + ":"
CAPABILITIES = {"problems": {"softmax_attention"}, "dtypes": {"float64"}}
PRINT_BYTES = 1 << 20  # how much Prints writes in all


class Hostile:
    """Base: ``attention`` runs :meth:`misbehave` on every call."""

    capabilities = CAPABILITIES

    def attention(self, q, k, v, *, scale):
        return self.misbehave(q, k, v, scale)

    def misbehave(self, q, k, v, scale):
        raise NotImplementedError


# --------------------------------------------------------------------------- the inputs


class ZeroesV(Hostile):
    """Wrong, and covers it up: zeroes its input V in place and returns zeros (the exact answer for
    V = 0). It must fail, never pass: the certified instance is not the backend's to change."""

    def misbehave(self, q, k, v, scale):
        v[...] = 0.0
        return np.zeros((q.shape[0], v.shape[1]))


class ScalesQInPlace(Hostile):
    """Correct: scales q in place (``q *= scale``) then computes softmax(q kᵀ) v. It must pass."""

    def misbehave(self, q, k, v, scale):
        q *= scale
        return correct_attention(q, k, v, 1.0)


# --------------------------------------------------------------------------- the process


class SysExit(Hostile):
    """Calls ``sys.exit(0)`` (a ``SystemExit``, which ``except Exception`` does not catch)."""

    def misbehave(self, q, k, v, scale):
        sys.exit(0)


class OsExit(Hostile):
    """Ends its process at once with ``os._exit(0)`` (exit code 0, and no answer)."""

    def misbehave(self, q, k, v, scale):
        os._exit(0)


class SelfSigkill(Hostile):
    """SIGKILLs its own process (as the kernel's out-of-memory killer would)."""

    def misbehave(self, q, k, v, scale):
        os.kill(os.getpid(), signal.SIGKILL)


class Segfaults(Hostile):
    """Reads address 0 (a segmentation fault, as a broken C extension would)."""

    def misbehave(self, q, k, v, scale):
        import ctypes

        return ctypes.string_at(0)


class RaisesKeyboardInterrupt(Hostile):
    """Raises ``KeyboardInterrupt`` (see the module docstring for what each runner does)."""

    def misbehave(self, q, k, v, scale):
        raise KeyboardInterrupt


class RaisesGeneratorExit(Hostile):
    """Raises ``GeneratorExit``, another ``BaseException`` that is not an ``Exception``."""

    def misbehave(self, q, k, v, scale):
        raise GeneratorExit


class HugeErrorMessage(Hostile):
    """Raises with a 10 MB message (the error must come back truncated)."""

    def misbehave(self, q, k, v, scale):
        raise ValueError("x" * 10_000_000)


class SpawnsChild(Hostile):
    """Starts ``sleep 60`` and leaves it running, then answers correctly."""

    def misbehave(self, q, k, v, scale):
        subprocess.Popen(["sleep", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return correct_attention(q, k, v, scale)


class DoubleForks(Hostile):
    """Double-forks a grandchild that sleeps for 60 s holding every inherited fd (the pipe to the harness
    included), reaps the intermediate child, then answers correctly."""

    def misbehave(self, q, k, v, scale):
        pid = os.fork()
        if pid == 0:
            if os.fork() == 0:
                time.sleep(60)
            os._exit(0)
        os.waitpid(pid, 0)
        return correct_attention(q, k, v, scale)


class Hangs(Hostile):
    """Never answers (``time.sleep(1e6)``)."""

    def misbehave(self, q, k, v, scale):
        time.sleep(1e6)


class HangsIgnoringSigterm(Hostile):
    """Ignores SIGTERM, then never answers."""

    def misbehave(self, q, k, v, scale):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(1e6)


# --------------------------------------------------------------------------- memory


class Allocates100GB(Hostile):
    """Allocates 100 GB with ``numpy.empty`` and touches every page."""

    def misbehave(self, q, k, v, scale):
        block = np.empty(100 * 10**9, dtype=np.uint8)
        block[::4096] = 1
        return correct_attention(q, k, v, scale)


class Allocates100GBBytearray(Hostile):
    """Allocates 100 GB as a ``bytearray`` (zero-filled: every page touched)."""

    def misbehave(self, q, k, v, scale):
        block = bytearray(100 * 10**9)
        return correct_attention(q, k, v, scale) + block[0]


class GrowsUntilExhausted(Hostile):
    """Keeps 64 MiB blocks, each touched, until memory runs out."""

    def misbehave(self, q, k, v, scale):
        blocks = []
        while True:
            blocks.append(np.ones(8 << 20))


# --------------------------------------------------------------------------- outputs


class HugeOutput(Hostile):
    """Returns a 10⁸-element array for a 4×3 answer (a broadcast view: 800 MB if it were serialised)."""

    def misbehave(self, q, k, v, scale):
        return np.broadcast_to(np.float64(0.0), (10**8,))


class ReturnsString(Hostile):
    """Returns the answer as a string."""

    def misbehave(self, q, k, v, scale):
        return str(correct_attention(q, k, v, scale).tolist())


class ReturnsStringArray(Hostile):
    """Returns the answer as an array of strings."""

    def misbehave(self, q, k, v, scale):
        return correct_attention(q, k, v, scale).astype(str)


class ReturnsComplex(Hostile):
    """Returns the answer as a complex array (imaginary parts 0)."""

    def misbehave(self, q, k, v, scale):
        return correct_attention(q, k, v, scale).astype(np.complex128)


class ReturnsObjectArray(Hostile):
    """Returns the answer as an object array of Python floats."""

    def misbehave(self, q, k, v, scale):
        return np.array(correct_attention(q, k, v, scale).tolist(), dtype=object)


class ReturnsBool(Hostile):
    """Returns ``True``."""

    def misbehave(self, q, k, v, scale):
        return True


class ReturnsBoolArray(Hostile):
    """Returns a boolean array of the answer's shape."""

    def misbehave(self, q, k, v, scale):
        return correct_attention(q, k, v, scale) > 0


class ReturnsListWithNone(Hostile):
    """Returns the answer as a list of lists with one entry ``None``."""

    def misbehave(self, q, k, v, scale):
        rows = correct_attention(q, k, v, scale).tolist()
        rows[0][0] = None
        return rows


class ReturnsDict(Hostile):
    """Returns a dict holding the answer."""

    def misbehave(self, q, k, v, scale):
        return {"out": correct_attention(q, k, v, scale)}


class ReturnsNone(Hostile):
    """Returns ``None``."""

    def misbehave(self, q, k, v, scale):
        return None


class ReturnsNaN(Hostile):
    """Returns the answer with one entry NaN."""

    def misbehave(self, q, k, v, scale):
        y = correct_attention(q, k, v, scale)
        y.flat[-1] = np.nan
        return y


# --------------------------------------------------------------------------- output streams and global state


class Prints(Hostile):
    """Writes 1 MiB in all to stdout and stderr, through ``print``, ``sys.stderr`` and ``os.write`` on fds
    1 and 2, then answers correctly."""

    def misbehave(self, q, k, v, scale):
        chunk = "noise " * (PRINT_BYTES // 24)
        print(chunk, end="")
        sys.stderr.write(chunk)
        os.write(1, chunk.encode())
        os.write(2, chunk.encode())
        return correct_attention(q, k, v, scale)


class ClosesStdout(Hostile):
    """Closes fd 1 and ``sys.stdout``, then answers correctly."""

    def misbehave(self, q, k, v, scale):
        sys.stdout.flush()
        os.close(1)
        return correct_attention(q, k, v, scale)


class SetsNumpyErrors(Hostile):
    """Sets ``np.seterr(all="ignore")`` and one-digit print options, then answers correctly (harmless, but
    must not leak into the harness)."""

    def misbehave(self, q, k, v, scale):
        np.seterr(all="ignore")
        np.set_printoptions(precision=1)
        return correct_attention(q, k, v, scale)


# name → what a runner reports for a call of that class: "ok" or the error kind
EXPECTED = {
    "ZeroesV": "ok", "ScalesQInPlace": "ok",
    "SysExit": "exception", "OsExit": "crash", "SelfSigkill": "crash", "Segfaults": "crash", "RaisesKeyboardInterrupt": "exception",
    "RaisesGeneratorExit": "exception", "HugeErrorMessage": "exception",
    "SpawnsChild": "ok", "DoubleForks": "ok", "Hangs": "timeout", "HangsIgnoringSigterm": "timeout",
    "Allocates100GB": "memory", "Allocates100GBBytearray": "memory", "GrowsUntilExhausted": "memory",
    "HugeOutput": "bad_output", "ReturnsString": "bad_output", "ReturnsStringArray": "bad_output",
    "ReturnsComplex": "bad_output", "ReturnsObjectArray": "bad_output", "ReturnsBool": "bad_output",
    "ReturnsBoolArray": "bad_output", "ReturnsListWithNone": "bad_output", "ReturnsDict": "bad_output",
    "ReturnsNone": "bad_output", "ReturnsNaN": "ok",
    "Prints": "ok", "ClosesStdout": "ok", "SetsNumpyErrors": "ok",
}
HOSTILE = {name: globals()[name] for name in EXPECTED}


class Catalogue:
    """Every hostile class behind one backend: ``hostile=<class name>`` runs that misbehaviour, no
    ``hostile`` answers correctly."""

    capabilities = CAPABILITIES

    def attention(self, q, k, v, *, scale, hostile=None):
        if hostile is None:
            return correct_attention(q, k, v, scale)
        return HOSTILE[hostile]().misbehave(q, k, v, scale)
