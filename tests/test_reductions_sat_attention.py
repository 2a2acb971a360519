"""SAT → k-OV → k-MaxIP → attention end to end: on 100+ small formulas (random near the threshold and
structured, SAT and UNSAT) the chain's answer through the reference and numpy backends agrees with PySAT
and with brute force, and every decoded assignment satisfies its formula; CNFgen families (skipped without
CNFgen); worker processes; refusals before any answer; a backend wrong on the chain is caught; instance
sets from --cnf and --cnfgen round trip and name tampering."""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from attnspec.conformance.frontends.cli import main
from attnspec.conformance.harness.builtin_backends import numpy_backend, reference_backend
from attnspec.conformance.harness.isolation import InProcessRunner, ProcessRunner
from attnspec.conformance.judging.precision_model import PrecisionModel
from attnspec.reductions import cnf
from attnspec.reductions.base import run_reduction
from attnspec.reductions.registry import get_reduction
from attnspec.reductions.sat_to_attention import SAT_TO_SOFTMAX, SAT_TO_TENSOR

solvers = pytest.importorskip("pysat.solvers")

DATA = Path(__file__).parent / "data" / "cnf"
RUNNERS = {"reference": InProcessRunner(reference_backend()), "numpy": InProcessRunner(numpy_backend())}
HAVE_CNFGEN = cnf.cnfgen_available()


def pysat_says(formula: cnf.CNF) -> bool:
    with solvers.Solver(name="minisat22", bootstrap_with=[list(c) for c in formula.clauses]) as solver:
        sat = solver.solve()
        if sat:  # PySAT's model satisfies the formula by our own clause check too
            model = set(solver.get_model() or [])
            full = tuple(v if v in model else -v for v in range(1, formula.num_vars + 1))
            assert formula.satisfies(full) is None
        return bool(sat)


@lru_cache(maxsize=1)
def corpus() -> tuple[tuple[str, cnf.CNF], ...]:
    """≥ 100 distinct formulas with ≤ 12 variables, without CNFgen: random 3-CNF at the threshold ratio and
    above it, planted 3-CNF, pigeonhole, parity (perfect matchings of K_n), Tseitin on cycles with chords,
    and the hand-written fixture files."""
    rng = np.random.default_rng(2024)
    out: dict[str, tuple[str, cnf.CNF]] = {}

    def add(label, formula):
        out.setdefault(formula.sha256, (label, formula))

    for n in range(3, 13):
        for ratio in (4.26, 4.26, 5.5, 6.0, 7.0):
            add(f"random_3cnf/{n}/{ratio}", cnf.generate("random_3cnf", n, rng, ratio=ratio)[0])
        for _ in range(2):
            add(f"planted_3cnf/{n}", cnf.generate("planted_3cnf", n, rng)[0])
    for holes, sat in ((1, False), (2, False), (2, True), (3, True), (3, False)):
        add(f"pigeonhole/{holes}/{sat}", cnf.generate("pigeonhole", holes, rng, satisfiable=sat)[0])
    for vertices in (2, 3, 4, 5):
        add(f"parity/{vertices}", cnf.generate("parity", vertices, rng)[0])
    for vertices in range(3, 9):
        for sat in (True, False, True, False):
            add(f"tseitin_cycle/{vertices}/{sat}", cnf.generate("tseitin_cycle", vertices, rng, satisfiable=sat)[0])
    for path in sorted(DATA.glob("*.cnf")):
        if not path.name.startswith("bad_"):
            add(path.name, cnf.read_dimacs(path))
    return tuple(out.values())


def test_the_corpus_is_large_varied_and_small():
    formulas = corpus()
    truths = Counter((label.split("/")[0], pysat_says(f)) for label, f in formulas)
    assert len(formulas) >= 100 and all(f.num_vars <= 12 for _, f in formulas)
    assert sum(n for (_, sat), n in truths.items() if sat) >= 30 and sum(n for (_, sat), n in truths.items() if not sat) >= 30
    for family in ("random_3cnf", "pigeonhole", "parity", "tseitin_cycle"):  # random and structured, both answers
        assert truths[(family, True)] >= 1 and truths[(family, False)] >= 1, family


def _check(reduction, runner, formula, label):
    outcome = run_reduction(reduction, formula, {}, runner)
    assert outcome.status == "agree", (label, outcome.to_json())
    sat = pysat_says(formula)
    assert outcome.decoded.decision == outcome.truth.decision == sat, label
    if sat:
        assert formula.satisfies(outcome.decoded.witness) is None
        assert outcome.decoded.certificate["assignment_checked"] is True
    else:
        assert outcome.decoded.witness is None and "certified UNSAT" in outcome.decoded.certificate["unsat"]
    return outcome


@pytest.mark.parametrize("shard", [0, 1])  # two halves of the corpus: each test stays short
@pytest.mark.parametrize("reduction,backend,max_vars", [
    (SAT_TO_SOFTMAX, "numpy", 12), (SAT_TO_SOFTMAX, "reference", 12),
    (SAT_TO_TENSOR, "numpy", 12), (SAT_TO_TENSOR, "reference", 6),  # the exact tensor reference is O(N³·d)
], ids=["softmax-numpy", "softmax-reference", "tensor-numpy", "tensor-reference"])
def test_chain_agrees_with_pysat_on_the_corpus(reduction, backend, max_vars, shard):
    checked = Counter()
    for label, formula in corpus()[shard::2]:
        if formula.num_vars <= max_vars:
            outcome = _check(reduction, RUNNERS[backend], formula, label)
            checked[outcome.truth.decision] += 1
    assert checked[True] >= 5 and checked[False] >= 5
    assert sum(checked.values()) >= (50 if max_vars == 12 else 15)  # both shards: every formula of ≤ 12 variables


CNFGEN_CASES = [("php", {"pigeons": 3, "holes": 2}), ("php", {"pigeons": 2, "holes": 2}),
                ("randkcnf", {"k": 3, "n": 8, "m": 34, "seed": 1}), ("randkcnf", {"k": 3, "n": 10, "m": 30, "seed": 2}),
                ("tseitin", {"vertices": 6, "degree": 3, "seed": 0}),
                ("tseitin", {"vertices": 6, "degree": 3, "seed": 0, "charge": "even"}),
                ("parity", {"n": 4}), ("parity", {"n": 5}), ("op", {"size": 3}), ("count", {"n": 5, "p": 2})]


@pytest.mark.skipif(not HAVE_CNFGEN, reason="CNFgen (optional, GPL-3.0) is not installed")
@pytest.mark.parametrize("family,params", CNFGEN_CASES, ids=[f"{f}-{'-'.join(map(str, p.values()))}" for f, p in CNFGEN_CASES])
def test_cnfgen_families_through_the_chain(family, params):
    formula = cnf.from_cnfgen(family, **params)
    for reduction in (SAT_TO_SOFTMAX, SAT_TO_TENSOR):
        _check(reduction, RUNNERS["numpy"], formula, family)
    if formula.num_vars <= 8:
        _check(SAT_TO_SOFTMAX, RUNNERS["reference"], formula, family)


def test_without_cnfgen_the_family_is_refused_with_the_install_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cnfgen", None)  # as if it were not installed
    assert not cnf.cnfgen_available()
    with pytest.raises(ValueError, match=r"CNFgen is not installed \(optional, GPL-3.0\)"):
        cnf.from_cnfgen("php", pigeons=3, holes=2)


def test_cnfgen_refuses_unknown_families_and_parameters():
    with pytest.raises(ValueError, match="unknown CNFgen family 'nope'"):
        cnf.from_cnfgen("nope")
    with pytest.raises(ValueError, match="unknown: holez"):
        cnf.from_cnfgen("php", pigeons=3, holez=2)


def test_through_worker_processes():
    picks = [f for label, f in corpus() if label.startswith(("pigeonhole/2", "tseitin_cycle/5", "sat_small"))]
    assert len(picks) >= 3
    for backend in ("numpy", "reference"):
        with ProcessRunner(backend, timeout=60) as runner:
            for formula in picks:
                _check(SAT_TO_SOFTMAX, runner, formula, backend)
            _check(SAT_TO_TENSOR, runner, picks[0], backend)


class _ReversesRealRows:
    """numpy's attention with the first half of the output rows (the real queries) reversed: right on
    the padding rows, wrong about which partial assignment is which."""

    def __init__(self):
        self.inner = numpy_backend()
        self.capabilities = self.inner.capabilities

    def attention(self, q, k, v, **kwargs):
        out = np.array(self.inner.attention(q, k, v, **kwargs))
        half = out.shape[0] // 2
        out[:half] = out[:half][::-1]
        return out


def test_a_backend_wrong_on_the_chain_gives_unchecked_assignments_and_is_caught():
    runner = InProcessRunner(_ReversesRealRows())
    statuses = Counter()
    for label, formula in corpus():
        if formula.num_vars > 8 or not pysat_says(formula):
            continue
        outcome = run_reduction(SAT_TO_SOFTMAX, formula, {}, runner)
        statuses[outcome.status] += 1
        if outcome.status == "agree":  # a reversed row can happen to hold a satisfying assignment too
            assert formula.satisfies(outcome.decoded.witness) is None
        else:
            assert outcome.status == "wrong" and outcome.decoded.certificate["assignment_checked"] is False
            assert formula.satisfies(outcome.decoded.witness) == outcome.decoded.certificate["falsified_clause"]
    assert statuses["wrong"] >= 5
    judged = run_reduction(SAT_TO_SOFTMAX, cnf.read_dimacs(DATA / "sat_small.cnf"), {}, runner, judge=True)
    assert judged.detected and judged.calls[0].status == "fail"


class _Counting:
    def __init__(self, capabilities):
        self.inner, self.capabilities, self.calls = numpy_backend(), capabilities, 0

    def attention(self, *args, **kwargs):
        self.calls += 1
        return self.inner.attention(*args, **kwargs)


def test_unsat_is_never_reported_without_a_certified_margin():
    formula = cnf.read_dimacs(DATA / "unsat_xor.cnf")
    caps = {"problems": {"softmax_attention"}, "dtypes": {"float64"}, "precision": {"float64": PrecisionModel("float16")}}
    backend = _Counting(caps)
    outcome = run_reduction(SAT_TO_SOFTMAX, formula, {}, InProcessRunner(backend))
    assert outcome.status == "refused" and outcome.decoded is None and backend.calls == 0
    assert "float16 precision model allows errors up to" in outcome.refused and f"{outcome.margin:.3g}" in outcome.refused
    no_margin = run_reduction(SAT_TO_SOFTMAX, formula, {"beta": 0.1}, RUNNERS["numpy"])  # β·Δ < ln n: G < H
    assert no_margin.status == "refused" and "no margin" in no_margin.refused


def test_registered_with_its_parameters():
    assert get_reduction("sat_to_softmax") is SAT_TO_SOFTMAX and get_reduction("sat_to_tensor") is SAT_TO_TENSOR
    assert SAT_TO_TENSOR.build(cnf.make_cnf(3, [[1, 2, 3]]), {}).cases[0].instance.order == 3
    with pytest.raises(ValueError, match="unknown sat_to_softmax parameters"):
        SAT_TO_SOFTMAX.generate("random_3cnf", 4, np.random.default_rng(0), lamda=3)
    with pytest.raises(ValueError, match="reads its formula from the parameter 'cnf'"):
        SAT_TO_SOFTMAX.generate("dimacs", 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="belong to family 'dimacs'"):
        SAT_TO_SOFTMAX.generate("parity", 4, np.random.default_rng(0), cnf="p cnf 1 1\n1 0\n")


# --------------------------------------------------------------------------- instance sets


def test_instance_set_from_a_cnf_file_round_trips_and_names_tampering(tmp_path, capsys):
    out = tmp_path / "set"
    assert main(["instances", "generate", "sat_to_softmax", "--cnf", str(DATA / "sat_small.cnf"), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["instances"][0]
    text = manifest["parameters"]["cnf"]
    assert cnf.parse_dimacs(text) == cnf.read_dimacs(DATA / "sat_small.cnf")
    assert record["source"]["params"]["sha256"] == record["meta"]["chain"]["cnf"]["sha256"] == cnf.parse_dimacs(text).sha256
    assert manifest["parameters"]["origin"]["file_sha256"] == __import__("hashlib").sha256((DATA / "sat_small.cnf").read_bytes()).hexdigest()
    chain = record["meta"]["chain"]
    assert chain["ov"]["vectors_per_group"] == 4 and chain["maxip"]["tau_hi"] == 5 and chain["maxip"]["gap"] == 1
    assert record["answer"]["decision"] is True and record["reference"]["status"] == "agree"
    assert cnf.read_dimacs(DATA / "sat_small.cnf").satisfies(record["reference"]["decoded"]["witness"]) is None
    assert main(["instances", "verify", str(out)]) == 0
    assert main(["instances", "run", str(out), "--backend", "numpy", "--isolation", "none"]) == 0
    assert main(["conform", "--backend", "numpy", "--instances", str(out), "--isolation", "none"]) == 0
    capsys.readouterr()
    manifest["parameters"]["cnf"] = text.replace("-1 2 0", "-1 -2 0")  # another formula, same shape
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["instances", "verify", str(out), "--no-reference"]) == 1
    assert "source.params.sha256" in capsys.readouterr().out


@pytest.mark.skipif(not HAVE_CNFGEN, reason="CNFgen (optional, GPL-3.0) is not installed")
def test_instance_set_from_cnfgen_verifies_without_cnfgen(tmp_path, capsys, monkeypatch):
    out = tmp_path / "php"
    assert main(["instances", "generate", "sat_to_tensor", "--cnfgen", "php", "--param", "pigeons=3", "--param", "holes=2",
                 "--param", "lam=1000", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["origin"]["cnfgen"] == "php" and manifest["parameters"]["lam"] == 1000
    assert manifest["instances"][0]["answer"]["decision"] is False and manifest["instances"][0]["reference"]["status"] == "agree"
    assert "--cnfgen php" in manifest["provenance"]["command"]
    monkeypatch.setattr(cnf, "from_cnfgen", None)  # verify re-derives from the stored text alone
    assert main(["instances", "verify", str(out)]) == 0


def test_instance_set_cli_usage_errors(tmp_path, capsys):
    out = str(tmp_path / "x")
    cases = [(["--cnf", str(DATA / "sat_small.cnf"), "--n", "3"], "no /FAMILY, --n or --count"),
             (["--cnf", str(DATA / "sat_small.cnf"), "--cnfgen", "php"], "exactly one of --cnf FILE and --cnfgen FAMILY"),
             ([], "--n and --count are required"),
             (["--cnf", str(DATA / "missing.cnf")], "does not exist"),
             (["--cnf", str(DATA / "sat_small.cnf"), "--param", "memory_limit=100"], "> memory limit 100 bytes")]
    for extra, words in cases:
        assert main(["instances", "generate", "sat_to_softmax", "--out", out, *extra]) == 2
        assert words in capsys.readouterr().err


def test_generated_families_round_trip_as_instance_sets(tmp_path):
    from attnspec.reductions.instance_sets import generate_set, verify_set

    out = tmp_path / "all"
    generate_set("sat_to_softmax", "all", 4, 5, 1, out)  # every hand-written family once
    assert verify_set(out) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["family"] for r in manifest["instances"]] == list(cnf.FAMILIES)
    assert all(r["reference"]["status"] == "agree" for r in manifest["instances"])
