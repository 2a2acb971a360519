"""Fast exact softmax attention on any array-API library (numpy on CPU, CuPy on GPU, torch).

Computes Att(Q, K, V) = D⁻¹AV with A = exp(s·QKᵀ), D = diag(A·1) (definition:
:mod:`attnspec.spec.softmax_attention`) in the inputs' floating-point format, without ever forming
the n×n matrix A.

Algorithm (online softmax, FlashAttention-style). Query rows are taken in row blocks and, for each,
the keys in key blocks of ``block_size``. For a row block the code keeps a running row maximum m and an
accumulator acc = Σ_j exp(L_ij − m_i)·[v_j | 1] over the key blocks seen so far (the appended column
of ones makes the normaliser D_ii come out of the same matrix product as AV, so no separate row-sum
pass). For the next key block with logits L (one matrix product):

    m' = max(m, rowmax L)
    acc ← exp(m − m')·acc + exp(L − m')·[V_blk | 1]      (the rescaling; skipped for the first block)
    out = acc[:, :dv] / acc[:, dv]                        (after the last block)

Every argument of exp is ≤ 0, so no logit magnitude overflows (±1000 is ordinary); a weight
underflows only when it is below the format's range relative to the row's largest weight, and then it
is negligible against that weight. The row maximum always contributes exp(0) = 1, so the normaliser is
≥ 1 and the division is safe.

Rescalings (for the precision model): the contribution of a key in key block b (0-based, of
B = ceil(n / block_size) blocks) is multiplied by one rescaling factor exp(m − m') for each later block,
i.e. at most B − 1 times; :func:`rescale_count` returns that number. Every such factor comes from one
exp call and one multiplication. (So the model's bound R ≤ ceil(n / block) holds with room to spare.)

Memory: one row-block × key-block logit tile (about ``TILE_ELEMENTS`` numbers) per worker thread, the
accumulator and an n×(dv+1) copy of [V | 1]: O(n·dv + tile), never n². On numpy, large inputs are split
into contiguous row ranges run by one thread per core (cut at row-block boundaries, so every row sees
exactly the serial code's operations: the result is bitwise the same). With numpy and CuPy the tile is reused in place
(``out=``); other libraries (torch) run the same code with fresh arrays.

Logits that overflow the format itself (|s·⟨q_i,k_j⟩| beyond ~1.8e308 in float64) make the row NaN: the
exact answer exists, but this format cannot compute it; the error is visible, never silent.
"""

from __future__ import annotations

import math
import os
from typing import Any

import array_api_compat
import numpy as np

from attnspec.spec.validation import SpecError, finite_real
from attnspec.accelerated.array_namespace import array_namespace, native_module

PROBLEM = "softmax_attention"
SUPPORTED_DTYPE_NAMES = ("float32", "float64")
DEFAULT_KEY_BLOCK = 2048
# Logit tile (row block × key block) ~ 2¹⁹ numbers = 4 MiB in float64: measured fastest among the
# sizes tried on the 2-core benchmark machine (docs/benchmarks.md), and small next to n².
TILE_ELEMENTS = 1 << 19


def default_block_size(n: int) -> int:
    """Keys per block when the caller does not choose: min(n, DEFAULT_KEY_BLOCK)."""
    return max(1, min(int(n), DEFAULT_KEY_BLOCK))


def rescale_count(n: int, block_size: int | None = None) -> int:
    """Most rescalings exp(m − m')·(…) one key's weight undergoes: ceil(n / block) − 1.

    ``block_size`` None means :func:`default_block_size`. A block larger than n is one block (no
    rescaling at all).
    """
    n = _positive_int(n, "n")
    b = default_block_size(n) if block_size is None else _positive_int(block_size, "block_size")
    return math.ceil(n / b) - 1


def softmax_attention(q: Any, k: Any, v: Any, *, scale: Any, block_size: int | None = None) -> Any:
    """D⁻¹AV with A = exp(scale·QKᵀ), by a blocked online softmax; same library and dtype as the inputs.

    ``q``, ``k``: n×d, ``v``: n×dv arrays of one library (numpy, CuPy, torch), all float32 or all
    float64; ``scale``: a finite real (cast to the input dtype); ``block_size``: keys per block
    (default :func:`default_block_size`). Raises :class:`SpecError` for a wrong ndim or shape, an
    unsupported or mixed dtype, a non-finite input entry, a non-finite scale or a bad block size.
    """
    xp = array_namespace(q, k, v)
    n, d, dv = _check_inputs(xp, q, k, v)
    s = finite_real(scale, "scale")
    kb = default_block_size(n) if block_size is None else _positive_int(block_size, "block_size")
    kb = min(kb, n)
    rb = max(1, min(n, TILE_ELEMENTS // kb))
    dtype = q.dtype
    dev = array_api_compat.device(q)
    native = native_module(q)

    qs = q * xp.asarray(s, dtype=dtype, device=dev)  # s·Q once (n×d), cast to the input format
    # [V | 1]: the last column of acc accumulates the normaliser D_ii with the same product.
    v1 = xp.concat([v, xp.ones((n, 1), dtype=dtype, device=dev)], axis=1)
    out = xp.empty((n, dv), dtype=dtype, device=dev)

    def run_rows(first: int, last: int) -> None:
        tile = xp.empty((rb, kb), dtype=dtype, device=dev) if native is not None else None
        for i0 in range(first, last, rb):
            i1 = min(last, i0 + rb)
            acc = _row_block(xp, native, qs[i0:i1, :], k, v1, kb, tile)
            out[i0:i1, :] = acc[:, :dv] / acc[:, dv:]

    workers = _cpu_workers(native, n, rb)
    if workers == 1:
        run_rows(0, n)
    else:  # contiguous row ranges cut at row-block boundaries: the same blocks, so the same bits
        per = -(-math.ceil(n / rb) // workers) * rb
        with _blas_single_threaded():
            list(_pool(workers).map(lambda first: run_rows(first, min(n, first + per)), range(0, n, per)))
    return out


# Row blocks on numpy run on a thread pool (numpy releases the GIL in matmul and exp), with BLAS held to
# one thread meanwhile so the two do not fight over the cores. exp (outside BLAS) is the largest cost,
# so this measured 1.6× faster than serial code with a 2-thread BLAS (docs/benchmarks.md). Only above
# PARALLEL_MIN_ELEMENTS logits, where the hand-off (~0.1 ms) is negligible.
PARALLEL_MIN_ELEMENTS = 1 << 21
_POOLS: dict[int, Any] = {}
_BLAS: list = []


def _cpu_workers(native, n: int, rb: int) -> int:
    if native is not np or n * n < PARALLEL_MIN_ELEMENTS or _blas_controller() is None:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores, math.ceil(n / rb)))


def _blas_controller():
    """threadpoolctl's controller (made once: it scans the loaded libraries), or None without it."""
    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS.append(ThreadpoolController())
        except Exception:  # no threadpoolctl: stay serial rather than oversubscribe the cores
            _BLAS.append(None)
    return _BLAS[0]


def _blas_single_threaded():
    return _blas_controller().limit(limits=1, user_api="blas")


def _pool(workers: int):
    if workers not in _POOLS:
        from concurrent.futures import ThreadPoolExecutor

        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="attnspec-softmax")
    return _POOLS[workers]


def _row_block(xp, native, qs, k, v1, kb, tile):
    """acc = Σ_j exp(L_ij − m_i)·[v_j | 1] for one row block, m_i its row maximum (online)."""
    n = k.shape[0]
    rows = qs.shape[0]
    m = None
    acc = None
    for j0 in range(0, n, kb):
        j1 = min(n, j0 + kb)
        kt = xp.permute_dims(k[j0:j1, :], (1, 0))
        if native is not None:
            logits = tile[:rows, : j1 - j0]
            native.matmul(qs, kt, out=logits)
        else:
            logits = xp.matmul(qs, kt)
        block_max = xp.max(logits, axis=1)
        if m is None:
            m = block_max
        else:
            m_new = xp.maximum(m, block_max)
            acc *= xp.exp(m - m_new)[:, None]  # the rescaling (≤ ceil(n/kb) − 1 per key)
            m = m_new
        logits -= m[:, None]
        if native is not None:
            native.exp(logits, out=logits)
            weights = logits
        else:
            weights = xp.exp(logits)
        contribution = xp.matmul(weights, v1[j0:j1, :])
        acc = contribution if acc is None else _add_into(acc, contribution)
    return acc


def _add_into(acc, x):
    acc += x
    return acc


def _check_inputs(xp, q, k, v) -> tuple[int, int, int]:
    """Cheap structural checks (O(nd), nothing exact): ndim, shapes, dtypes, finiteness."""
    for name, x in (("Q", q), ("K", k), ("V", v)):
        if x.ndim != 2:
            raise SpecError(f"{name} must be 2-D (n x d), got {x.ndim}-D with shape {tuple(x.shape)}")
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise SpecError(f"{name} must have at least one row and one column, got shape {tuple(x.shape)}")
    if tuple(q.shape) != tuple(k.shape):
        raise SpecError(f"Q and K must have the same shape n x d: {tuple(q.shape)} vs {tuple(k.shape)}")
    if v.shape[0] != k.shape[0]:
        raise SpecError(f"K and V must have the same number of rows n: {tuple(k.shape)} vs {tuple(v.shape)}")
    names = [_dtype_name(xp, x.dtype) for x in (q, k, v)]
    for name, dt in zip(("Q", "K", "V"), names):
        if dt not in SUPPORTED_DTYPE_NAMES:
            raise SpecError(f"{name} has unsupported dtype {dt}; the accelerated path takes float32 or float64")
    if len(set(names)) != 1:
        raise SpecError(f"Q, K, V must share one dtype, got {', '.join(names)}")
    for name, x in (("Q", q), ("K", k), ("V", v)):
        if not bool(xp.all(xp.isfinite(x))):
            raise SpecError(f"{name} has a non-finite entry (NaN or Inf)")
    return int(q.shape[0]), int(q.shape[1]), int(v.shape[1])


def _dtype_name(xp, dtype) -> str:
    for name in SUPPORTED_DTYPE_NAMES:
        if dtype == getattr(xp, name):
            return name
    return str(dtype)


def _positive_int(x: Any, name: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) and not hasattr(x, "__index__"):
        raise SpecError(f"{name} must be a positive integer, got {x!r}")
    x = int(x)
    if x < 1:
        raise SpecError(f"{name} must be a positive integer, got {x}")
    return x


__all__ = ["softmax_attention", "rescale_count", "default_block_size", "DEFAULT_KEY_BLOCK", "TILE_ELEMENTS", "PROBLEM"]
