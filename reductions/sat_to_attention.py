"""CNF-SAT → k-OV → Gap-k-MaxIP → attention, decoded back to a satisfying assignment (docs/reductions.md,
"SAT → k-OV → k-MaxIP → attention").

``sat_to_softmax`` (k = 2, softmax attention) and ``sat_to_tensor`` (k = 3, tensor attention) chain
:func:`~attnspec.reductions.sat_to_ov.sat_to_ov` (Williams' split), :func:`~attnspec.reductions.ov_to_maxip.ov_to_maxip`
(τ_hi = m, τ_lo = m − 1) and the registered Gap-MaxIP reductions ``maxip_to_softmax`` / ``maxip_to_tensor``
(their gadget, margins, decoding and refusal: :mod:`attnspec.reductions.maxip_gadget`, not copied).

Decoding: the gadget's YES witness tuple (one vector index per group) becomes the full assignment (the
groups' partial assignments concatenated), checked clause by clause; the answer is SAT with that
assignment, or a ``wrong`` outcome when the check fails (only a backend outside the margin can cause
that). UNSAT is the gadget's NO, which :func:`~attnspec.reductions.base.run_reduction` only ever reports
for a backend whose declared precision model or contract is below the margin (``refusal`` otherwise).

Source families: the hand-written generators of :mod:`attnspec.reductions.cnf` and ``dimacs``, whose formula
is the parameter ``cnf`` (DIMACS text; ``attnspec instances generate sat_to_softmax --cnf FILE`` or
``--cnfgen FAMILY``). Build parameters: ``lam``, ``dummy``, ``beta`` (the gadget's) and
``memory_limit`` (bytes, default :data:`~attnspec.reductions.sat_to_ov.DEFAULT_MEMORY_LIMIT`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from attnspec.reductions import cnf as cnfmod, maxip_gadget as gadget
from attnspec.reductions.base import Built, Reduction, SourceAnswer
from attnspec.reductions.cnf import CNF
from attnspec.reductions.maxip import MaxIPInstance
from attnspec.reductions.maxip_to_softmax_attention import MAXIP_TO_SOFTMAX
from attnspec.reductions.maxip_to_tensor_attention import MAXIP_TO_TENSOR
from attnspec.reductions.ov_to_maxip import block_width, maxip_parameters, ov_to_maxip
from attnspec.reductions.registry import register
from attnspec.reductions.sat_to_ov import (
    DEFAULT_MEMORY_LIMIT,
    ChainTooLarge,
    OVInstance,
    assignment,
    group_size,
    ov_parameters,
    sat_to_ov,
)

KIND = "cnf-sat"
INPUT_FAMILY = "dimacs"
GENERATOR_VERSION = "sat-gen/1"
GENERATOR_KEYS = ("satisfiable", "ratio")
CHAIN_KEYS = ("memory_limit",)
INPUT_KEYS = ("cnf", "origin")


@dataclass(frozen=True, eq=False)
class Chain:
    """Every intermediate of one formula: the k-OV and Gap-MaxIP instances."""

    cnf: CNF
    ov: OVInstance
    maxip: MaxIPInstance


@dataclass
class ChainBuilt(Built):
    chain: Chain | None = None


def chain_sizes(num_vars: int, num_clauses: int, k: int) -> dict[str, Any]:
    """The blow-up at each step, before anything is allocated: vectors 2^s per group (s = ⌈n/k⌉) of
    dimension m; Gap-MaxIP dimension m·block_width(k); attention N = 2·2^s rows of width ≈ the MaxIP
    dimension (the tuned dummy adds a few coordinates); bytes of each step's arrays and of the N^k
    attention scores a backend materialises."""
    s = group_size(num_vars, k)
    vectors = 2**s
    d_maxip = num_clauses * block_width(k)
    big_n = 2 * vectors
    bits = max(1, math.ceil(math.log2(vectors)))
    nbytes = {"ov": k * vectors * num_clauses, "maxip": k * vectors * d_maxip,
              "attention_inputs": 8 * big_n * (k * (d_maxip + 8) + (k - 1) * (1 + (k - 1) * bits)),
              "attention_scores": 8 * big_n**k}
    return {"k": k, "group_variables": s, "vectors_per_group": vectors, "ov_dimension": num_clauses,
            "maxip_dimension": d_maxip, "attention_n": big_n, "bytes": nbytes, "total_bytes": sum(nbytes.values())}


def check_size(cnf: CNF, k: int, memory_limit: int) -> dict[str, Any]:
    """:func:`chain_sizes`, or :class:`ChainTooLarge` naming the numbers when they exceed the limit."""
    sizes = chain_sizes(cnf.num_vars, cnf.num_clauses, k)
    if sizes["total_bytes"] > memory_limit:
        b = sizes["bytes"]
        raise ChainTooLarge(
            f"the chain for n = {cnf.num_vars} variables, m = {cnf.num_clauses} clauses, k = {k} needs "
            f"{k} × 2^{sizes['group_variables']} = {k * sizes['vectors_per_group']} OV vectors of dimension "
            f"{cnf.num_clauses}, Gap-MaxIP dimension {sizes['maxip_dimension']}, attention N = {sizes['attention_n']}: "
            f"{sizes['total_bytes']} bytes (OV {b['ov']}, MaxIP {b['maxip']}, attention inputs {b['attention_inputs']}, "
            f"scores N^{k}·8 = {b['attention_scores']}) > memory limit {memory_limit} bytes")
    return sizes


def build_chain(cnf: CNF, k: int, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> tuple[Chain, dict[str, Any]]:
    """The k-OV and Gap-MaxIP instances of ``cnf`` and the sizes (refused beyond ``memory_limit``)."""
    sizes = check_size(cnf, k, memory_limit)
    ov = sat_to_ov(cnf, k)
    return Chain(cnf, ov, ov_to_maxip(ov)), sizes


def _options(params: dict[str, Any] | None) -> tuple[dict[str, Any], int]:
    params = dict(params or {})
    build = dict((params.get("generator") or {}).get("build") or {})
    build.update({key: params[key] for key in gadget.BUILD_KEYS + CHAIN_KEYS if key in params})
    limit = build.pop("memory_limit", DEFAULT_MEMORY_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ValueError(f"memory_limit must be a positive integer (bytes), got {limit!r}")
    return gadget.build_options(build), limit


class SatToSoftmaxAttention(gadget.GadgetReduction):
    """CNF-SAT → 2-OV → Gap-MaxIP → softmax attention (the ``maxip_to_softmax`` gadget)."""

    name = "sat_to_softmax"
    source_kind = KIND
    target_problem = MAXIP_TO_SOFTMAX.target_problem
    families = cnfmod.FAMILIES
    input_families = (INPUT_FAMILY,)  # formulas given as a parameter: not part of the family "all"
    generator_version = GENERATOR_VERSION
    order = 2
    inner: Reduction = MAXIP_TO_SOFTMAX

    def build(self, source: CNF, params: dict[str, Any] | None = None) -> ChainBuilt:
        opts, limit = _options(params)
        chain, sizes = build_chain(source, self.order, limit)
        inner = self.inner.build(chain.maxip, opts)
        cases = [dataclasses.replace(c, case_id=f"{self.name}/v{source.num_vars}/m{source.num_clauses}/{c.case_id}")
                 for c in inner.cases]
        th = inner.meta["theorem"]
        meta = {**inner.meta, "chain": {
            "cnf": {"num_vars": source.num_vars, "num_clauses": source.num_clauses, "sha256": source.sha256},
            "ov": ov_parameters(chain.ov), "maxip": maxip_parameters(chain.maxip),
            "attention": {"problem": self.target_problem, "N": 2 * chain.maxip.n, "d": th["d"], "B": th["B"],
                          "sqrt_ln_n": math.sqrt(math.log(chain.maxip.n)),
                          "root_k_ln_n": math.log(chain.maxip.n) ** (1 / self.order), "beta": th["beta"]},
            "bytes": sizes["bytes"], "memory_limit": limit}}
        return ChainBuilt(self.name, source, dict(params or {}), cases, inner.decoder, meta, chain=chain)

    def decode(self, built: Built, answers: list[np.ndarray]) -> SourceAnswer:
        chain = _chain(built)
        found = gadget.decode_gadget(chain.maxip, built.decoder, answers[0])
        cert = {**found.certificate, "margin": float(built.decoder["required_accuracy"])}
        if not found.decision:
            cert["unsat"] = ("every T_i0 ≤ T*: certified UNSAT for a backend whose outputs are within the margin "
                             "(run_reduction refuses any other)")
            return SourceAnswer(False, None, cert)
        witness = found.witness or ()
        values = assignment(chain.ov, witness)
        falsified = chain.cnf.satisfies(values)
        cert.update(ov_tuple=[int(x) for x in witness], assignment_checked=falsified is None,
                    falsified_clause=falsified)
        return SourceAnswer(True, values, cert)

    def brute_force(self, source: CNF) -> SourceAnswer:
        """Every assignment evaluated (:func:`attnspec.reductions.cnf.brute_force`, not the chain)."""
        found = cnfmod.brute_force(source)
        return SourceAnswer(found is not None, found, {"method": "brute_force", "assignments": 2**source.num_vars})

    def agrees(self, source: CNF, decoded: SourceAnswer, truth: SourceAnswer) -> bool:
        """Same decision; a SAT answer's witness must satisfy every clause (any satisfying assignment)."""
        if decoded.decision != truth.decision:
            return False
        if not decoded.decision:
            return decoded.witness is None
        try:
            return decoded.witness is not None and source.satisfies(decoded.witness) is None
        except ValueError:
            return False

    def generate(self, family: str, n: int, rng: np.random.Generator, **params: Any) -> tuple[CNF, dict[str, Any]]:
        """A formula (``dimacs``: parsed from the parameter ``cnf``) and ``{"generator": record}``; the record
        carries the build options."""
        known = GENERATOR_KEYS + gadget.BUILD_KEYS + CHAIN_KEYS + INPUT_KEYS
        unknown = set(params) - set(known)
        if unknown:
            raise ValueError(f"unknown {self.name} parameters {sorted(unknown)}; known: {', '.join(known)}")
        if family == INPUT_FAMILY:
            text = params.get("cnf")
            if not isinstance(text, str):
                raise ValueError(f"family {INPUT_FAMILY!r} reads its formula from the parameter 'cnf' (DIMACS text; "
                                 "attnspec instances generate ... --cnf FILE)")
            formula = cnfmod.parse_dimacs(text, "parameters.cnf")
            record: dict[str, Any] = {"family": INPUT_FAMILY, "sha256": formula.sha256,
                                      "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
            if "origin" in params:
                record["origin"] = params["origin"]
        else:
            if set(params) & set(INPUT_KEYS):
                raise ValueError(f"the parameters {', '.join(INPUT_KEYS)} belong to family {INPUT_FAMILY!r}")
            formula, record = cnfmod.generate(family, n, rng, **{k: params[k] for k in GENERATOR_KEYS if k in params})
        opts, limit = _options(params)
        record["build"] = {**opts, "memory_limit": limit}
        record["order"] = self.order
        return formula, {"generator": record}

    def source_arrays(self, source: CNF) -> dict[str, np.ndarray]:
        return {"clauses": source.literal_matrix()}

    def source_params(self, source: CNF) -> dict[str, Any]:
        return {"num_vars": source.num_vars, "num_clauses": source.num_clauses, "sha256": source.sha256,
                "order": self.order}

    def source_from_files(self, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> CNF:
        if set(arrays) != {"clauses"}:
            raise ValueError(f"a CNF source is the array 'clauses', got {sorted(arrays)}")
        num_vars = params.get("num_vars")
        if isinstance(num_vars, bool) or not isinstance(num_vars, int):
            raise ValueError(f"CNF parameter 'num_vars' must be an integer, got {num_vars!r}")
        formula = cnfmod.cnf_from_matrix(arrays["clauses"], num_vars)
        for key in ("num_clauses", "sha256"):
            if params.get(key) != getattr(formula, key):
                raise ValueError(f"CNF parameter {key!r} = {params.get(key)!r} does not match the clauses")
        return formula


class SatToTensorAttention(SatToSoftmaxAttention):
    """CNF-SAT → 3-OV → Gap-3-MaxIP → tensor attention (the ``maxip_to_tensor`` gadget)."""

    name = "sat_to_tensor"
    target_problem = MAXIP_TO_TENSOR.target_problem
    order = 3
    inner = MAXIP_TO_TENSOR


def _chain(built: Built) -> Chain:
    chain = getattr(built, "chain", None)
    if chain is None:
        raise ValueError("this Built was not made by a SAT chain reduction")
    return chain


def input_parameters(cnf_file: str | None, cnfgen_family: str | None, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The set parameters (and n) for a formula from a DIMACS file or a CNFgen family (``params``: the
    ``--param`` values; CNFgen's own keys are taken out, the rest are build parameters). The canonical
    DIMACS text goes into the parameters (so ``verify`` needs neither the file nor CNFgen), the origin
    (file name and its bytes' SHA-256, or the CNFgen family and parameters) beside it."""
    params = dict(params)
    if (cnf_file is None) == (cnfgen_family is None):
        raise ValueError("give exactly one of --cnf FILE and --cnfgen FAMILY")
    if cnf_file is not None:
        formula, file_sha256 = cnfmod.read_dimacs_with_hash(cnf_file)
        origin: dict[str, Any] = {"file": str(cnf_file), "file_sha256": file_sha256}
    else:
        assert cnfgen_family is not None
        keys = cnfmod.CNFGEN_FAMILIES.get(cnfgen_family, ())
        gen = {k: params.pop(k) for k in keys if k in params}
        formula = cnfmod.from_cnfgen(cnfgen_family, **gen)
        from importlib.metadata import version

        origin = {"cnfgen": cnfgen_family, "params": gen, "cnfgen_version": version("cnfgen")}
    return {**params, "cnf": formula.to_dimacs(), "origin": origin}, max(1, formula.num_vars)


SAT_TO_SOFTMAX = register(SatToSoftmaxAttention())
SAT_TO_TENSOR = register(SatToTensorAttention())

__all__ = ["SatToSoftmaxAttention", "SatToTensorAttention", "SAT_TO_SOFTMAX", "SAT_TO_TENSOR", "Chain", "ChainBuilt",
           "build_chain", "chain_sizes", "check_size", "input_parameters"]
