"""CNF formulas: a strict DIMACS parser, the :class:`CNF` type, seeded generators with hand-written
structure (no dependency), CNFgen families through its Python API (optional: CNFgen is GPL-3.0 and is
never vendored), and a brute-force solver. Used by :mod:`attnspec.reductions.sat_to_attention`
(docs/reductions.md, "SAT → k-OV → k-MaxIP → attention").

DIMACS as accepted here (every violation is a :class:`DimacsError` naming line and column, 1-based):

- comment lines (first non-blank character ``c``) anywhere, also before the header and inside a clause
  that spans lines; blank lines anywhere;
- exactly one header ``p cnf V C`` before the first clause, V and C decimal integers without sign;
  V ≤ :data:`MAX_VARIABLES` and C ≤ :data:`MAX_CLAUSES`, checked before anything is allocated;
- clauses: literals ``-?[1-9][0-9]*`` with 1 ≤ |literal| ≤ V, each clause ended by ``0`` (a clause may
  span lines, a line may hold several clauses); anything else is a stray token;
- **empty clauses are refused**: a ``0`` with no literal before it (``1 2 0 0``, or a lone ``0``) is
  almost always a typo, and a formula with an empty clause is trivially unsatisfiable;
- the number of clauses must equal C; variables may be declared but unused (free variables, as CNFgen's
  random formulas have), a literal beyond V is an error;
- a line ``%`` ends the formula (SATLIB files end with ``%`` and ``0``): the rest is ignored;
- the file is UTF-8 (comments may hold any text), without NUL bytes, at most :data:`MAX_DIMACS_BYTES`
  bytes, and a regular file (read through the hardened helpers of
  :mod:`attnspec.conformance.harness.case_files`).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from attnspec.conformance.harness.case_files import CaseFileError, _open_regular, _read_bounded

MAX_DIMACS_BYTES = 16 * 2**20
MAX_VARIABLES = 1_000_000
MAX_CLAUSES = 10_000_000
MAX_BRUTE_FORCE_VARIABLES = 26  # 2^26 assignments, evaluated in chunks
_LITERAL = re.compile(r"-?[1-9][0-9]*\Z")
_COUNT = re.compile(r"(0|[1-9][0-9]*)\Z")
_TOKEN = re.compile(r"\S+")


class DimacsError(ValueError):
    """A malformed DIMACS file; ``line`` and ``column`` are 1-based (0: not tied to a position)."""

    def __init__(self, message: str, line: int = 0, column: int = 0, source: str = "<dimacs>"):
        where = f"{source}:{line}:{column}: " if line else f"{source}: "
        super().__init__(where + message)
        self.line, self.column, self.source = line, column, source


@dataclass(frozen=True)
class CNF:
    """A CNF formula over variables 1..``num_vars``; ``clauses`` are tuples of non-zero DIMACS literals
    (v or −v), each non-empty and within range (:func:`make_cnf` checks)."""

    num_vars: int
    clauses: tuple[tuple[int, ...], ...]

    @property
    def num_clauses(self) -> int:
        return len(self.clauses)

    def to_dimacs(self) -> str:
        """The canonical DIMACS text (header, one clause per line); :attr:`sha256` hashes it."""
        return "".join([f"p cnf {self.num_vars} {self.num_clauses}\n"] +
                       [" ".join(map(str, c)) + " 0\n" for c in self.clauses])

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_dimacs().encode("ascii")).hexdigest()

    def satisfies(self, assignment: Sequence[int]) -> int | None:
        """The index of the first clause ``assignment`` falsifies, or None when it satisfies every clause.
        ``assignment``: DIMACS literals, one per variable 1..n in order (v true, −v false)."""
        if len(assignment) != self.num_vars or any(abs(x) != v + 1 for v, x in enumerate(assignment)):
            raise ValueError(f"an assignment is one literal ±v per variable v = 1..{self.num_vars}, in order")
        true = set(assignment)
        for index, clause in enumerate(self.clauses):
            if not true.intersection(clause):
                return index
        return None

    def literal_matrix(self) -> np.ndarray:
        """The clauses as an m × L float64 matrix of literals (L the longest clause), padded with 0."""
        width = max((len(c) for c in self.clauses), default=0)
        out = np.zeros((self.num_clauses, width))
        for r, clause in enumerate(self.clauses):
            out[r, :len(clause)] = clause
        return out


def make_cnf(num_vars: int, clauses: Iterable[Iterable[int]]) -> CNF:
    """A validated :class:`CNF` (``ValueError`` naming the clause otherwise)."""
    if isinstance(num_vars, bool) or not isinstance(num_vars, (int, np.integer)) or not 0 <= num_vars <= MAX_VARIABLES:
        raise ValueError(f"the number of variables must be an integer in [0, {MAX_VARIABLES}], got {num_vars!r}")
    out = []
    for index, clause in enumerate(clauses):
        lits = tuple(int(x) for x in clause)
        if not lits:
            raise ValueError(f"clause {index + 1} is empty (empty clauses are refused)")
        if any(x == 0 or abs(x) > num_vars for x in lits):
            raise ValueError(f"clause {index + 1} has a literal outside ±1..±{num_vars}: {list(lits)}")
        out.append(lits)
    if len(out) > MAX_CLAUSES:
        raise ValueError(f"{len(out)} clauses exceed the limit of {MAX_CLAUSES}")
    return CNF(int(num_vars), tuple(out))


def cnf_from_matrix(matrix: np.ndarray, num_vars: int) -> CNF:
    """The inverse of :meth:`CNF.literal_matrix` (``ValueError`` on a non-integer or badly padded row)."""
    arr = np.asarray(matrix, dtype=np.float64)
    if arr.ndim != 2 or not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
        raise ValueError("a clause matrix is a 2-D array of integer literals")
    clauses = []
    for r, row in enumerate(arr.astype(np.int64)):
        nonzero = np.flatnonzero(row)
        if nonzero.size and nonzero[-1] != nonzero.size - 1:
            raise ValueError(f"clause row {r}: zeros are only padding after the literals")
        clauses.append(row[: nonzero.size].tolist())
    return make_cnf(num_vars, clauses)


# ---------------------------------------------------------------------------------------------- DIMACS


def parse_dimacs(data: bytes | str, source: str = "<dimacs>") -> CNF:
    """The formula in ``data`` (bytes or text), parsed strictly (module docstring); :class:`DimacsError`
    naming line and column otherwise."""
    if isinstance(data, bytes):
        if len(data) > MAX_DIMACS_BYTES:
            raise DimacsError(f"larger than {MAX_DIMACS_BYTES} bytes", source=source)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad_line = data.count(b"\n", 0, exc.start) + 1
            bad_column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
            raise DimacsError(f"not UTF-8 text (byte 0x{data[exc.start]:02x}): binary data?", bad_line, bad_column,
                              source) from None
    else:
        text = data
    header: tuple[int, int, int] | None = None  # (V, C, line)
    clauses: list[tuple[int, ...]] = []
    current: list[int] = []
    start = (0, 0)  # where the open clause began
    for line_no, line in enumerate(text.split("\n"), start=1):
        nul = line.find("\x00")
        if nul >= 0:
            raise DimacsError("binary data (a NUL byte)", line_no, nul + 1, source)
        stripped = line.strip()
        if not stripped or stripped[0] == "c":
            continue
        if stripped == "%":
            break
        if stripped[0] == "p":
            if header is not None:
                raise DimacsError(f"a second 'p cnf' header (the first is on line {header[2]})", line_no,
                                  line.index("p") + 1, source)
            if clauses or current:
                raise DimacsError("the 'p cnf' header must come before the first clause", line_no, line.index("p") + 1, source)
            header = _header(line, line_no, source)
            continue
        for match in _TOKEN.finditer(line):
            token, column = match.group(), match.start() + 1
            if header is None:
                raise DimacsError(f"{token!r} before the 'p cnf V C' header", line_no, column, source)
            if token == "0":
                if not current:
                    raise DimacsError("an empty clause ('0' with no literal before it, e.g. two zeros in a row): "
                                      "refused, since it makes the formula trivially unsatisfiable", line_no, column, source)
                clauses.append(tuple(current))
                current = []
                continue
            if not _LITERAL.match(token):
                raise DimacsError(f"stray token {token[:40]!r}: a literal is a non-zero integer, each clause ends with 0",
                                  line_no, column, source)
            if len(token.lstrip("-")) > len(str(header[0])) or abs(int(token)) > header[0]:
                raise DimacsError(f"literal {token[:40]} is out of range: the header declares {header[0]} variables",
                                  line_no, column, source)
            if not current:
                if len(clauses) == header[1]:
                    raise DimacsError(f"more clauses than the {header[1]} declared on line {header[2]}", line_no, column,
                                      source)
                start = (line_no, column)
            current.append(int(token))
    if header is None:
        raise DimacsError("no 'p cnf V C' header", source=source)
    if current:
        raise DimacsError("the last clause is not terminated by 0", *start, source)
    if len(clauses) != header[1]:
        raise DimacsError(f"the header declares {header[1]} clauses but the file has {len(clauses)}", header[2], 1, source)
    return CNF(header[0], tuple(clauses))


def _header(line: str, line_no: int, source: str) -> tuple[int, int, int]:
    tokens = list(_TOKEN.finditer(line))
    words = [t.group() for t in tokens]
    if len(words) < 2 or words[0] != "p" or words[1] != "cnf":
        raise DimacsError("the header must read 'p cnf V C'", line_no, tokens[0].start() + 1, source)
    if len(words) != 4:
        col = tokens[min(len(tokens) - 1, 4)].start() + 1
        raise DimacsError(f"the header must read 'p cnf V C' (4 fields), got {len(words)} fields", line_no, col, source)
    counts = []
    for token, what, limit in ((tokens[2], "variables", MAX_VARIABLES), (tokens[3], "clauses", MAX_CLAUSES)):
        text = token.group()
        if not _COUNT.match(text):
            raise DimacsError(f"the number of {what} {text[:40]!r} is not a non-negative decimal integer", line_no,
                              token.start() + 1, source)
        if len(text) > len(str(limit)) or int(text) > limit:  # length first: no huge int() before the check
            raise DimacsError(f"{text[:40]} {what} exceed the limit of {limit}", line_no, token.start() + 1, source)
        counts.append(int(text))
    return counts[0], counts[1], line_no


def read_dimacs(path: str | Path) -> CNF:
    """Parse the DIMACS file ``path``: a regular file (no FIFO, device or directory), read with a bound of
    :data:`MAX_DIMACS_BYTES` bytes (:class:`DimacsError` otherwise)."""
    return read_dimacs_with_hash(path)[0]


def read_dimacs_with_hash(path: str | Path) -> tuple[CNF, str]:
    """:func:`read_dimacs` and the SHA-256 of the bytes it parsed."""
    path = Path(path)
    try:
        with _open_regular(path, follow_symlinks=True) as f:
            data = _read_bounded(f, MAX_DIMACS_BYTES, path)
    except CaseFileError as exc:
        raise DimacsError(str(exc).replace("case files are", "DIMACS files are"), source=str(path)) from None
    return parse_dimacs(data, str(path)), hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------- solving


def brute_force(cnf: CNF) -> tuple[int, ...] | None:
    """The first satisfying assignment in the order of the integers (bit v−1 is variable v), or None:
    every one of the 2^n assignments is evaluated (numpy, in chunks), independent of the reduction."""
    n = cnf.num_vars
    if n > MAX_BRUTE_FORCE_VARIABLES:
        raise ValueError(f"brute force over 2^{n} assignments refused (limit 2^{MAX_BRUTE_FORCE_VARIABLES})")
    chunk = 1 << min(n, 16)
    shifts = np.arange(n, dtype=np.int64)
    for lo in range(0, 1 << n, chunk):
        codes = np.arange(lo, lo + chunk, dtype=np.int64)
        values = ((codes[:, None] >> shifts[None, :]) & 1).astype(bool)  # (chunk, n)
        ok = np.ones(chunk, dtype=bool)
        for clause in cnf.clauses:
            lits = np.asarray(clause)
            vals = values[:, np.abs(lits) - 1]
            ok &= np.where(lits > 0, vals, ~vals).any(axis=1)
            if not ok.any():
                break
        hits = np.flatnonzero(ok)
        if hits.size:
            code = int(codes[hits[0]])
            return tuple((v + 1) if (code >> v) & 1 else -(v + 1) for v in range(n))
    return None


# ---------------------------------------------------------------------------------------------- generators
# Hand-written families (seeded, no dependency): n is the size parameter named per family.

FAMILIES = ("random_3cnf", "planted_3cnf", "pigeonhole", "parity", "tseitin_cycle")
RANDOM_3CNF_RATIO = 4.26  # the satisfiability threshold of random 3-CNF


def random_kcnf(n: int, m: int, k: int, rng: np.random.Generator, planted: Sequence[int] | None = None) -> CNF:
    """m clauses of k distinct variables with random signs; with ``planted`` (literals), every clause
    falsified by it is redrawn, so the planted assignment satisfies the formula."""
    if not 1 <= k <= n:
        raise ValueError(f"random k-CNF needs 1 ≤ k ≤ n, got k = {k}, n = {n}")
    clauses: list[tuple[int, ...]] = []
    truth = set(planted or ())
    while len(clauses) < m:
        vars_ = rng.choice(n, size=k, replace=False) + 1
        clause = tuple(int(v) if s else -int(v) for v, s in zip(vars_, rng.integers(0, 2, size=k)))
        if planted is None or truth.intersection(clause):
            clauses.append(clause)
    return make_cnf(n, clauses)


def pigeonhole(pigeons: int, holes: int) -> CNF:
    """PHP^pigeons_holes: variable p·holes + h + 1 says pigeon p sits in hole h; every pigeon in some hole,
    no two in one. Unsatisfiable iff pigeons > holes."""
    var = lambda p, h: p * holes + h + 1  # noqa: E731
    clauses = [[var(p, h) for h in range(holes)] for p in range(pigeons)]
    clauses += [[-var(p, h), -var(q, h)] for h in range(holes) for p, q in itertools.combinations(range(pigeons), 2)]
    return make_cnf(pigeons * holes, clauses)


def xor_clauses(variables: Sequence[int], charge: int) -> list[list[int]]:
    """The 2^{k−1} clauses of x₁ ⊕ … ⊕ x_k = parity (each forbids one assignment of the wrong parity)."""
    out = []
    for signs in itertools.product((0, 1), repeat=len(variables)):
        if sum(signs) % 2 != charge:  # forbid the assignment x = signs
            out.append([-v if s else v for v, s in zip(variables, signs)])
    return out


def parity(n: int) -> CNF:
    """The parity principle on n vertices: variable per edge {u, v} of K_n, every vertex matched by exactly
    one chosen edge (a perfect matching). Satisfiable iff n is even."""
    if n < 2:
        raise ValueError("the parity family needs n ≥ 2 vertices")
    edges = list(itertools.combinations(range(n), 2))
    var = {e: i + 1 for i, e in enumerate(edges)}
    clauses = []
    for u in range(n):
        incident = [var[e] for e in edges if u in e]
        clauses.append(incident)
        clauses += [[-a, -b] for a, b in itertools.combinations(incident, 2)]
    return make_cnf(len(edges), clauses)


def tseitin_cycle(n: int, rng: np.random.Generator, satisfiable: bool) -> CNF:
    """Tseitin formula on a cycle with chords: vertices 0..n−1, edges = variables; each vertex says the
    XOR of its edges equals its charge. Satisfiable iff the total charge is even (connected graph)."""
    if n < 3:
        raise ValueError("the tseitin_cycle family needs n ≥ 3 vertices")
    edges = [(v, (v + 1) % n) for v in range(n)] + [(v, v + n // 2) for v in range(0, n // 2, 2) if n >= 6]
    charges = [int(x) for x in rng.integers(0, 2, size=n)]
    if (sum(charges) % 2 == 0) != satisfiable:
        charges[0] ^= 1
    clauses = []
    for v in range(n):
        incident = [e + 1 for e, (a, b) in enumerate(edges) if v in (a, b)]
        clauses += xor_clauses(incident, charges[v])
    return make_cnf(len(edges), clauses)


def generate(family: str, n: int, rng: np.random.Generator, *, satisfiable: bool | None = None,
             ratio: float = RANDOM_3CNF_RATIO) -> tuple[CNF, dict[str, Any]]:
    """A seeded formula of ``family`` and its generator record. ``n``: variables (random_3cnf at the
    threshold ratio m/n = 4.26, planted_3cnf: satisfiable by a planted assignment), holes (pigeonhole: n + 1
    pigeons, unsatisfiable; ``satisfiable=True`` gives n pigeons), vertices (parity: K_n, satisfiable iff
    n is even; tseitin_cycle: a cycle with chords, satisfiable iff the charge is even). ``satisfiable``
    (pigeonhole, tseitin_cycle) defaults to a fair coin from ``rng``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown CNF family {family!r}; known: {', '.join(FAMILIES)}")
    if satisfiable is None and family in ("pigeonhole", "tseitin_cycle"):
        satisfiable = bool(rng.integers(0, 2))
    record: dict[str, Any] = {"family": family, "n": n}
    if family in ("random_3cnf", "planted_3cnf"):
        m = max(1, round(ratio * n))
        planted = None
        if family == "planted_3cnf":
            planted = [v if b else -v for v, b in zip(range(1, n + 1), rng.integers(0, 2, size=n))]
            record["planted"] = planted
        cnf = random_kcnf(n, m, min(3, n), rng, planted)
        record.update(m=m, ratio=ratio)
    elif family == "pigeonhole":
        cnf = pigeonhole(n if satisfiable else n + 1, n)
        record["pigeons"] = n if satisfiable else n + 1
    elif family == "parity":
        cnf = parity(n)
        satisfiable = n % 2 == 0
    else:
        cnf = tseitin_cycle(n, rng, bool(satisfiable))
    if satisfiable is not None:
        record["satisfiable"] = bool(satisfiable)
    return cnf, record


# ---------------------------------------------------------------------------------------------- CNFgen

CNFGEN_FAMILIES = {
    "randkcnf": ("k", "n", "m", "seed"),
    "php": ("pigeons", "holes"),
    "tseitin": ("vertices", "degree", "seed", "charge"),
    "parity": ("n",),
    "op": ("size",),
    "count": ("n", "p"),
}


def cnfgen_available() -> bool:
    try:
        import cnfgen  # noqa: F401
    except ImportError:
        return False
    return True


def from_cnfgen(family: str, **params: Any) -> CNF:
    """A formula of a CNFgen family through its Python API (``pip install cnfgen``, GPL-3.0, optional):
    ``randkcnf`` (k, n, m, seed: RandomKCNF), ``php`` (pigeons, holes: PigeonholePrinciple), ``tseitin``
    (vertices, degree, seed, charge = odd|even: TseitinFormula on a random regular graph), ``parity``
    (n: PerfectMatchingPrinciple on K_n, the parity principle), ``op`` (size: OrderingPrinciple), ``count`` (n, p: CountingPrinciple)."""
    if family not in CNFGEN_FAMILIES:
        raise ValueError(f"unknown CNFgen family {family!r}; known: {', '.join(CNFGEN_FAMILIES)}")
    unknown = set(params) - set(CNFGEN_FAMILIES[family])
    if unknown:
        raise ValueError(f"CNFgen family {family!r} takes {', '.join(CNFGEN_FAMILIES[family])}; "
                         f"unknown: {', '.join(sorted(unknown))}")
    try:
        import cnfgen
    except ImportError:
        raise ValueError("CNFgen is not installed (optional, GPL-3.0): pip install 'attnspec[sat]' or cnfgen") from None
    ints = {k: v for k, v in params.items() if k != "charge"}
    for key, value in ints.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"CNFgen parameter {key} must be an integer, got {value!r}")
    try:
        if family == "randkcnf":
            formula = cnfgen.RandomKCNF(params["k"], params["n"], params["m"], seed=params.get("seed", 0))
        elif family == "php":
            formula = cnfgen.PigeonholePrinciple(params["pigeons"], params["holes"])
        elif family == "tseitin":
            import networkx

            graph = networkx.random_regular_graph(params.get("degree", 3), params["vertices"], seed=params.get("seed", 0))
            charge = params.get("charge", "odd")
            if charge not in ("odd", "even"):
                raise ValueError(f"tseitin charge is 'odd' (unsatisfiable) or 'even', got {charge!r}")
            charges = [1 if (v == 0 and charge == "odd") else 0 for v in range(params["vertices"])]
            formula = cnfgen.TseitinFormula(graph, charges=charges)
        elif family == "parity":
            import networkx

            formula = cnfgen.PerfectMatchingPrinciple(networkx.complete_graph(params["n"]))
        elif family == "op":
            formula = cnfgen.OrderingPrinciple(params["size"])
        else:
            formula = cnfgen.CountingPrinciple(params["n"], params["p"])
    except KeyError as exc:
        raise ValueError(f"CNFgen family {family!r} needs parameter {exc.args[0]!r}") from None
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"CNFgen family {family!r} failed: {exc}") from None
    return parse_dimacs(formula.to_dimacs(), f"cnfgen:{family}")


__all__ = ["CNF", "DimacsError", "make_cnf", "parse_dimacs", "read_dimacs", "read_dimacs_with_hash", "brute_force", "generate", "FAMILIES",
           "from_cnfgen", "cnfgen_available", "CNFGEN_FAMILIES", "MAX_DIMACS_BYTES", "MAX_VARIABLES", "MAX_CLAUSES"]
