"""``attnspec audit``: certified audits of approximate attention.

    attnspec audit poly --d D --bound B --eps E [--scale S] [--n N] [--json]
        degree, rank, certified polynomial relative error, certified end-to-end bound (for sequence
        length N), and the certified actual error of the polynomial method on generated instances.
    attnspec audit BACKEND-SPEC --eps E --bound B [--d D] [--scale S] [--n N] [--json]
        runs any backend ("module:attr", or a built-in name) on bounded-entry instances plus an
        adversarial search, judged with certified verdicts at tolerance E.

Exit codes: 0 the claim holds on every instance, 1 violated or undecided, 2 bad usage or parameters
the method refuses (SpecError: e.g. a logit radius float64 cannot serve).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from attnspec.spec.validation import SpecError


def load_audited_backend(spec: str, *, eps: float, bound: float) -> Any:
    """The backend to audit: ``poly`` is the polynomial method with the audited (eps, bound); anything
    else goes through the suite's loader (:func:`attnspec.conformance.harness.backends.load_backend`)."""
    if spec == "poly":
        from attnspec.accelerated.polynomial_attention import PolynomialAttentionBackend

        return PolynomialAttentionBackend(eps=eps, bound=bound)
    from attnspec.conformance.harness.backends import load_backend

    return load_backend(spec)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("audit", help="certified audit of an approximate attention method or backend")
    p.add_argument("target", help="'poly' (the polynomial method) or a backend: built-in name or module:attr")
    p.add_argument("--d", type=int, default=4, help="head dimension d (default 4)")
    p.add_argument("--bound", type=float, required=True, help="entry bound B")
    p.add_argument("--eps", type=float, required=True, help="additive tolerance eps_a")
    p.add_argument("--scale", type=float, default=None, help="logit scale s (default 1/d)")
    p.add_argument("--n", type=int, default=64, help="rows of the generated instances (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--instances", type=int, default=4, help="generated instances (default 4)")
    p.add_argument("--adversarial", type=int, default=30, help="hypothesis examples for the adversarial search (0: none)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def _usage(msg: str) -> int:
    print(f"attnspec audit: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from attnspec.conformance.audits import polynomial_audit as audit

    if args.d < 1 or args.n < 1 or args.instances < 1:
        return _usage("--d, --n and --instances must be positive")
    scale = 1.0 / args.d if args.scale is None else args.scale
    result: dict[str, Any] = {"target": args.target}
    try:
        if args.target == "poly":
            cert = audit.certify_configuration(args.n, args.d, bound=args.bound, scale=scale, eps=args.eps)
            result["certified_bound"] = cert.as_dict()
            errs = audit.certified_errors_of_method(args.n, args.d, bound=args.bound, scale=scale, eps=args.eps,
                                                    seed=args.seed, count=args.instances)
            result["instances"] = [{"name": nm, "certified_error": [e.lower, e.upper], "worst_index": list(e.worst_index)}
                                   for nm, e in errs]
            ok = cert.holds and all(e.upper <= args.eps for _, e in errs)
            result["status"] = "holds" if ok else "violated"
        else:
            backend = load_audited_backend(args.target, eps=args.eps, bound=args.bound)
            report = audit.audit_backend(backend, eps=args.eps, bound=args.bound, scale=scale, n=args.n, d=args.d,
                                         seed=args.seed, count=args.instances, adversarial_examples=args.adversarial)
            result.update(report.as_dict())
            ok = report.status == "holds"
    except SpecError as exc:
        return _refused(args, exc)
    except Exception as exc:
        if type(exc).__name__ == "BackendLoadError":
            return _usage(str(exc))
        raise
    _print(result, as_json=args.json)
    return 0 if ok else 1


def _refused(args: argparse.Namespace, exc: Exception) -> int:
    """Bad parameters, or parameters the method refuses (float64 cannot deliver): reported, exit 2."""
    if args.json:
        print(json.dumps({"target": args.target, "status": "refused", "message": str(exc)}, indent=2))
    else:
        print(f"attnspec audit: refused: {exc}", file=sys.stderr)
    return 2


def _print(result: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    if "certified_bound" in result:
        c = result["certified_bound"]
        print(f"polynomial method: n={c['n']} d={c['d']} B={c['bound']:g} scale={c['scale']:g} eps_a={c['eps_a']:g}")
        print(f"  logit radius R = B^2|s|d = {c['logit_radius']:g}; degree g = {c['degree']}; rank r = binom(d+g,g) = {c['rank']}")
        lo, hi = c["poly_rel_eps_certified"]
        print(f"  certified sup|P/exp - 1| on [-R,R] in [{lo:.6e}, {hi:.6e}] (design claim {c['poly_rel_eps_claimed']:.3e})")
        print(f"  float64 evaluation error eta <= {c['eval_rel_error']:.3e} (cancellation factor {c['cancellation_factor']:.3g})")
        print(f"  certified end-to-end bound {c['end_to_end_bound']:.6e} {'<=' if c['holds'] else '>'} eps_a")
        for inst in result["instances"]:
            lo, hi = inst["certified_error"]
            print(f"  instance {inst['name']:<10} certified max error in [{lo:.6e}, {hi:.6e}]")
    else:
        print(f"audit of {result['target']}: claim eps_a={result['eps_a']:g} under B={result['bound']:g}, scale={result['scale']:g}")
        for c in result["cases"]:
            ci = c["certified_error"]
            err = f"[{ci[0]:.3e}, {ci[1]:.3e}]" if ci else "n/a"
            print(f"  {c['name']:<12} {c['status']:<9} certified error {err}  {c['message']}")
    print(f"claim {result['status']}")


__all__ = ["register", "run", "load_audited_backend"]
