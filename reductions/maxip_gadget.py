"""The attention gadget shared by Gap-MaxIP → softmax attention (k = 2) and → tensor attention (k ≥ 2):
construction, margin analysis, decoding and refusal. Derivations: docs/reductions.md, "Gap-MaxIP →
softmax attention" and "Gap-MaxIP → tensor attention" (labels there: [R] reconstructed from the paper
digest, [D] derived and checked here).

Construction (N = 2n rows, AS normalisation: scale = fl(1/d'), entries s = (β·d')^{1/k}):

- queries:  Q[i] = [s·a_i, s·1_e] for i < n, zero rows after (padding queries);
- keys:     K_m[j] = [s·b_{m,j}, 0_e] for j < n; the n dummy keys K_m[n + j] are
  ``zero``  all zero (every tuple with a dummy has logit 0),
  ``max``   s·1_d (k = 2 only: logit β·w, the paper's "half of each row at the maximum"),
  ``tuned`` [0_d, c·s·1_e]: an all-dummy tuple has logit L = scale·s·(c·s)^{k−1}·e for every query,
            a mixed tuple has logit 0 (the real part of a dummy and the extra part of a real key are 0);
            L is chosen so that the dummy mass m equals √(G·H), the odds midpoint [D];
- values:   V_m column 0 is the real-key indicator; for every key slot m' and bit b < L_bits = ⌈log₂ n⌉,
            column 1 + (m'−1)·L_bits + b of V_m is bit b of j (real keys) when m = m', else the
            indicator. So (V₁⊘…)[(j₁…), 0] = [all real] and column (m', b) = [all real]·bit_b(j_{m'}).

Row i < n: T_i0 = S_i/(S_i + m), S_i = Σ_J exp(β·⟨a_i, b_J⟩) over real tuples J, m the known dummy mass.
YES rows have S ≥ G = e^{β·τ_hi}; rows of a NO instance have S ≤ H = n^{k−1}·e^{β·τ_lo}. Decision: YES iff
some T_i0 > T* = S*/(S* + m), S* = √(G·H). Witness: row i* = argmax T_i0, bit b of j_{m'} is
[T_{i*,(m',b)} > T_{i*,0}/2]; verified on the source (O(k·d)) and otherwise replaced by the best tuple of
row i* (a scan of its n^{k−1} tuples, the paper's search step).

Margins (every output entry within ε of the exact one ⇒ the decoding is right) [D]:
    ε_dec  = min(T(G) − T*, T* − T(H)),           T(S) = S/(S + m)
    ε_bits = (G − H) / (3·(G + H + m))            (bits of the unique tuple above τ_lo)
    required accuracy = min(ε_dec, ε_bits), positive iff G > H, i.e. β·Δ > ln(n^{k−1}); β is chosen
    with the safety factor λ: β·Δ ≥ ln(λ·n^{k−1}).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import mpmath
import numpy as np

from attnspec.conformance.judging.problems import get_problem
from attnspec.reductions.base import Built, Reduction, ReductionError, SourceAnswer
from attnspec.reductions.maxip import MaxIPInstance, inner_products, tuple_inner_product

DUMMIES = ("tuned", "zero", "max")
DEFAULT_LAMBDA = 100.0
BUILD_KEYS = ("lam", "dummy", "beta")
_SAFETY = 1 - 2.0**-30  # margins are computed at 50 digits; this covers the final float rounding


def build_options(params: dict[str, Any] | None) -> dict[str, Any]:
    """λ, the dummy kind and β from ``params`` or, for instance sets, from ``params['generator']['build']``."""
    params = dict(params or {})
    opts = dict((params.get("generator") or {}).get("build") or {})
    opts.update({k: params[k] for k in BUILD_KEYS if k in params})
    lam = float(opts.get("lam", DEFAULT_LAMBDA))
    dummy = opts.get("dummy", "tuned")
    beta = opts.get("beta")
    if not math.isfinite(lam) or lam <= 1:
        raise ValueError(f"the safety factor λ must be a finite number > 1, got {lam!r}")
    if dummy not in DUMMIES:
        raise ValueError(f"unknown dummy kind {dummy!r}; known: {', '.join(DUMMIES)}")
    if beta is not None and (isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0
                             or not math.isfinite(beta)):
        raise ValueError(f"β must be a finite number > 0 or null, got {beta!r}")
    return {"lam": lam, "dummy": dummy, "beta": None if beta is None else float(beta)}


def _entry_for(beta: float, d: int, scale: Fraction, k: int) -> tuple[float, Fraction]:
    """The smallest float s with exact β' = s^k·scale ≥ β (start from the float root, step up by ulps)."""
    s = float((beta * d) ** (1.0 / k))
    while Fraction(s) ** k * scale < Fraction(beta):
        s = float(np.nextafter(s, np.inf))
    while s > 0 and Fraction(float(np.nextafter(s, 0))) ** k * scale >= Fraction(beta):
        s = float(np.nextafter(s, 0))
    return s, Fraction(s) ** k * scale


def _mp(x: Fraction | int | float) -> mpmath.mpf:
    if isinstance(x, Fraction):
        return mpmath.mpf(x.numerator) / x.denominator
    return mpmath.mpf(x)


def bit_count(n: int) -> int:
    return max(1, math.ceil(math.log2(n)))


def build_gadget(source: MaxIPInstance, opts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The attention inputs (``q``, ``keys``, ``values``, exact ``scale``), the decoder data and the theorem
    parameters for ``source`` (module docstring)."""
    n, d, k, w = source.n, source.d, source.order, source.weight
    hi, lo, gap = source.tau_hi, source.tau_lo, source.gap
    dummy, lam = opts["dummy"], opts["lam"]
    if dummy == "max" and k != 2:
        raise ValueError("the max-logit dummy needs k = 2: with k ≥ 3 a tuple of one real and one dummy key "
                         "has logit β·⟨a, b⟩, which depends on the query (use 'tuned' or 'zero')")
    tuples = n ** (k - 1)
    beta_target = opts["beta"] if opts["beta"] is not None else math.log(lam * tuples) / gap
    mixed = (2 * n) ** (k - 1) - 2 * tuples  # tuples of real and dummy keys (tuned layout)
    extra, wanted_logit = 0, 0.0
    if dummy == "tuned":
        # n^{k−1}·e^L + mixed = √(GH) = e^{β(τ_hi+τ_lo)/2}·n^{(k−1)/2}
        log_mid = beta_target * (hi + lo) / 2 + math.log(tuples) / 2
        if log_mid < 700:
            log_rest = math.log(max(math.exp(log_mid) - mixed, 1.0))
        else:  # e^log_mid overflows a float (large τ, e.g. the SAT chain's τ = m): log(e^x − c) = x + log(1 − c·e^−x)
            log_rest = log_mid + math.log1p(-mixed * math.exp(-log_mid))
        wanted_logit = max(0.0, log_rest - math.log(tuples))
        extra = max(1, math.ceil(wanted_logit / beta_target))
    width = d + extra
    scale = Fraction(1.0 / width)  # the float the backend receives, exactly
    s, beta = _entry_for(beta_target, width, scale, k)
    big_n = 2 * n
    q = np.zeros((big_n, width))
    q[:n, :d] = s * source.a
    q[:n, d:] = s
    keys = []
    c = 0.0
    if dummy == "tuned":
        c = min(1.0, float((wanted_logit / (float(beta) * extra)) ** (1.0 / (k - 1))))
    for m in range(k - 1):
        key = np.zeros((big_n, width))
        key[:n, :d] = s * source.sets[m]
        if dummy == "max":
            key[n:, :d] = s
        elif dummy == "tuned":
            key[n:, d:] = c * s
        keys.append(key)
    bits = bit_count(n)
    cols = 1 + (k - 1) * bits
    index_bits = (np.arange(n)[:, None] >> np.arange(bits)[None, :]) & 1
    values = []
    for m in range(k - 1):
        v = np.zeros((big_n, cols))
        v[:n, :] = 1.0
        v[:n, 1 + m * bits: 1 + (m + 1) * bits] = index_bits
        values.append(v)

    # Exact logits of the dummy groups, then the masses at 50 digits.
    with mpmath.workdps(50):
        if dummy == "zero":
            groups = [((2 * n) ** (k - 1) - tuples, Fraction(0))]
        elif dummy == "max":
            groups = [(n, beta * w)]
        else:
            groups = [(tuples, scale * Fraction(s) * Fraction(c * s) ** (k - 1) * extra), (mixed, Fraction(0))]
        mass = sum(cnt * mpmath.exp(_mp(logit)) for cnt, logit in groups if cnt)
        g = mpmath.exp(_mp(beta) * hi)
        h = tuples * mpmath.exp(_mp(beta) * lo)
        t_of = lambda x: x / (x + mass)  # noqa: E731
        t_star = float(t_of(mpmath.sqrt(g * h)))
        ts = _mp(Fraction(t_star))
        eps_dec = min(t_of(g) - ts, ts - t_of(h))
        eps_bits = (g - h) / (3 * (g + h + mass))
        required = max(0.0, float(min(eps_dec, eps_bits)) * _SAFETY)
        t_min, t_max = float(t_of(mpmath.mpf(tuples))), float(t_of(tuples * mpmath.exp(_mp(beta) * w)))
        log_mass = float(mpmath.log(mass)) if mass > 0 else -math.inf
        dummy_logit = float(max((logit for cnt, logit in groups if cnt), default=Fraction(0)))
    # Padding queries are zero: every tuple has logit 0, so row = mean over tuples = Π_m mean(V_m[:, col]).
    padding_row = [float(math.prod(Fraction(int(v[:, col].sum()), big_n) for v in values)) for col in range(cols)]
    decoder = {"n": n, "order": k, "bits": bits, "t_star": t_star, "required_accuracy": required,
               "eps_decision": float(eps_dec), "eps_bits": float(eps_bits), "t_yes": float(t_of(g)),
               "t_no": float(t_of(h)), "t_min": t_min, "t_max": t_max,
               "padding_row": padding_row, "tau_lo": lo, "tau_hi": hi}
    log_n = math.log(n)
    meta = {"theorem": {
        "log": "natural", "n": n, "k": k, "d_source": d, "d": width, "c": width / log_n,
        "B": s, "C_b": s / log_n ** (1.0 / k), "beta": float(beta), "lambda": lam, "gap": gap,
        "eps_gap": gap / hi, "t": hi, "max_logit": max(float(beta) * w, dummy_logit),
        "eps_a_needed": required, "C_a": (-math.log(required) / log_n) if required > 0 else math.inf,
        "margin_condition": f"β·Δ = {float(beta) * gap:.4g} ≥ ln(λ·n^(k−1)) = {math.log(lam * tuples):.4g}",
    }, "gadget": {"dummy": dummy, "extra_coordinates": extra, "dummy_factor": c, "log_dummy_mass": log_mass,
                  "log_G": float(beta) * hi, "log_H": float(beta) * lo + math.log(tuples), "t_star": t_star,
                  "eps_decision": float(eps_dec), "eps_bits": float(eps_bits)}}
    arrays = {"q": q, "keys": keys, "values": values, "scale": scale}
    return arrays, decoder, meta


def _inconsistent(message: str) -> ReductionError:
    return ReductionError("the backend's answer contradicts what the gadget fixes exactly: " + message, "inconsistent")


def check_output(out: Any, decoder: dict[str, Any]) -> np.ndarray:
    """The output as an (N, columns) float array, after the checks any answer within the margin ε passes:
    finite; padding rows within ε of their exact values; real rows in [T_min − ε, T_max + ε] (column 0)
    and bit columns in [−ε, T_i0 + 2ε]. A violation raises :class:`ReductionError` (kind ``inconsistent``)."""
    n, eps = decoder["n"], decoder["required_accuracy"]
    expected = np.asarray(decoder["padding_row"])
    arr = np.asarray(out, dtype=np.float64)
    if arr.shape != (2 * n, expected.size):
        raise ReductionError(f"output shape {arr.shape}, expected {(2 * n, expected.size)}", "bad_output")
    if not np.isfinite(arr).all():
        raise _inconsistent("non-finite entries")
    pad_err = np.abs(arr[n:] - expected[None, :]).max()
    if not pad_err <= eps:
        raise _inconsistent(f"a zero query row is off its exact value by {pad_err:.3g} > margin {eps:.3g}")
    t0 = arr[:n, 0]
    if not (t0 >= decoder["t_min"] - eps).all() or not (t0 <= decoder["t_max"] + eps).all():
        raise _inconsistent(f"column 0 of the real rows leaves [{decoder['t_min']:.6g}, {decoder['t_max']:.6g}] ± {eps:.3g}")
    bits = arr[:n, 1:]
    if not (bits >= -eps).all() or not (bits <= t0[:, None] + 2 * eps).all():
        raise _inconsistent("a bit column lies outside [0, column 0] beyond the margin")
    return arr


def decode_gadget(source: MaxIPInstance, decoder: dict[str, Any], out: Any) -> SourceAnswer:
    """Decision, witness and certificate from one gadget output (module docstring)."""
    arr = check_output(out, decoder)
    n, k, bits = decoder["n"], decoder["order"], decoder["bits"]
    t0 = arr[:n, 0]
    row = int(np.argmax(t0))
    yes = bool(t0[row] > decoder["t_star"])
    cert: dict[str, Any] = {"method": "attention", "t_star": decoder["t_star"], "max_t0": float(t0[row]),
                            "distance_to_threshold": float(abs(t0[row] - decoder["t_star"])),
                            "closest_row_distance": float(np.abs(t0 - decoder["t_star"]).min())}
    if not yes:
        return SourceAnswer(False, None, cert)
    picked = arr[row, 1:].reshape(k - 1, bits) > arr[row, 0] / 2
    from_bits = (row, *(int((p * (1 << np.arange(bits))).sum()) for p in picked))
    cert["bits_witness"] = list(from_bits)
    if all(j < n for j in from_bits[1:]) and tuple_inner_product(source, from_bits) > source.tau_lo:
        cert["witness_path"] = "bits"
        return SourceAnswer(True, from_bits, cert)
    ips = inner_products(source.a[row:row + 1], source.sets)[0]  # the search step: scan row i*'s tuples
    best = tuple(int(x) for x in np.unravel_index(int(ips.argmax()), ips.shape))
    cert["witness_path"] = "row_scan"
    return SourceAnswer(True, (row, *best), cert)


def agrees(source: MaxIPInstance, decoded: SourceAnswer, truth: SourceAnswer) -> bool:
    """Same decision; a YES witness must exceed τ_lo, and where exactly one tuple does (planted and
    adversarial families) both the returned witness and the bit-decoded one must be that tuple."""
    if decoded.decision != truth.decision:
        return False
    if not truth.decision:
        return decoded.witness is None
    if decoded.witness is None or len(decoded.witness) != source.order:
        return False
    if not all(0 <= x < source.n for x in decoded.witness) or tuple_inner_product(source, decoded.witness) <= source.tau_lo:
        return False
    if truth.certificate.get("unique_above_lo"):
        bits = decoded.certificate.get("bits_witness")
        return decoded.witness == truth.witness and bits is not None and tuple(bits) == truth.witness
    return True


def refusal(problem: Any, inst: Any, caps: Any, required: float, meta: dict[str, Any]) -> str | None:
    """Why ``caps`` cannot be trusted with this gadget instance (None: it can), naming the numbers."""
    theorem = meta["theorem"]
    k = theorem["k"]
    needs = (f"decoding needs every output entry within ε < {required:.3g} (ε_a = n^-{theorem['C_a']:.3g}) on "
             f"entries up to B = {theorem['B']:.4g} = {theorem['C_b']:.3g}·(ln n)^(1/{k}), n = {theorem['n']}")
    if not required > 0:
        gad = meta["gadget"]
        return (f"the gadget has no margin (ε_dec = {gad['eps_decision']:.3g}, ε_bits = {gad['eps_bits']:.3g}, "
                f"threshold T* = {gad['t_star']!r} in float64): G = e^{gad['log_G']:.4g} does not exceed "
                f"H = e^{gad['log_H']:.4g} with a float64-representable threshold between ({theorem['margin_condition']})")
    if caps.contract_eps is not None:
        from attnspec.conformance.judging.case_common import outside_declared_limits
        from attnspec.spec.validation import max_abs_exact

        limits = outside_declared_limits(caps, d=inst.d, max_entry=max(max_abs_exact(x) for x in problem.inputs(inst)),
                                         scale=inst.scale, order=problem.order(inst))
        if limits:
            return f"the contract (ε_a = {caps.contract_eps:g}, B = {caps.bound}) does not cover the instance: " \
                   f"{'; '.join(limits)}; {needs}"
        if not caps.contract_eps < required:
            return f"the contract ε_a = {caps.contract_eps:g} is not below the margin: {needs}"
        return None
    model = caps.precision_for("float64")
    overflow = problem.overflow_reason(inst, model)
    if overflow is not None:
        return f"{overflow}; {needs}"
    tol = np.asarray(problem.precision_tolerance(inst, model), dtype=np.float64)
    worst = float(np.nanmax(np.where(np.isfinite(tol), tol, np.inf)))
    if not worst < required:
        return f"the {model.fmt} precision model allows errors up to {worst:.3g}, not below the margin: {needs}"
    return None


def applicability(problem_name: str, inst: Any, caps: Any) -> str | None:
    """What the backend does not declare at all (the problem, float64, n, d); the contract's bound and the
    precision model are the refusal's business, which names the margin beside them."""
    reasons = []
    if problem_name not in caps.problems:
        reasons.append(f"backend does not declare {problem_name}")
    if "float64" not in caps.dtypes:
        reasons.append(f"dtype float64 not declared (declared: {', '.join(sorted(caps.dtypes))})")
    if caps.max_n is not None and inst.n > caps.max_n:
        reasons.append(f"n = {inst.n} exceeds declared max_n = {caps.max_n}")
    if caps.max_d is not None and inst.d > caps.max_d:
        reasons.append(f"d = {inst.d} exceeds declared max_d = {caps.max_d}")
    return "; ".join(reasons) or None


class GadgetReduction(Reduction):
    """A reduction whose target is one gadget instance (``built.cases[0]``) with its margin in the
    decoder: the margin, the refusal and the applicability are the gadget's."""

    def required_accuracy(self, built: Built) -> float:
        return float(built.decoder["required_accuracy"])

    def refusal(self, built: Built, caps: Any) -> str | None:
        return refusal(get_problem(self.target_problem), built.cases[0].instance, caps, self.required_accuracy(built),
                       built.meta)

    def applicability(self, built: Built, caps: Any) -> str | None:
        return applicability(self.target_problem, built.cases[0].instance, caps)
