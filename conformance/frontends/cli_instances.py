"""``attnspec instances``: hard-instance sets from the executable reductions (format: docs/reductions.md).

    attnspec instances list
        the registered reductions and their source families.
    attnspec instances generate REDUCTION[/FAMILY] --n N --count C --seed S --out DIR [--param KEY=VALUE ...]
        writes DIR/manifest.json (attnspec.instances/1) and one .npz per instance; without /FAMILY the
        families take turns. Example: attnspec instances generate hmv_to_odamv/planted_yes --n 16
        --count 20 --seed 1 --out sets/hmv --param tau=0.5
    attnspec instances generate sat_to_softmax|sat_to_tensor --cnf FILE | --cnfgen FAMILY [--param ...] --out DIR
        the SAT chain on one formula (a DIMACS file, or a CNFgen family with its parameters as --param).
    attnspec instances verify DIR [--no-reference] [--json]
        re-derives every instance and answer; names each array or field that differs.
    attnspec instances run DIR --backend SPEC [--isolation process|none] [--timeout T] [--no-judge] [--json]
        judges a backend on the set: per instance, whether its answers decode to the stored source
        answer, and the certified error of each target output against the decoding margin.

Exit codes: 0 ok, 1 a mismatch (verify) or a backend caught (run), 2 bad usage or a malformed or hostile
set (refused by the hardened readers; nothing is ever unpickled).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("instances", help="hard-instance sets with known answers: generate, verify, run")
    sub = p.add_subparsers(dest="instances_command", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="registered reductions and their families")
    ls.set_defaults(func=run_list)
    g = sub.add_parser("generate", help="write an instance set")
    g.add_argument("family", metavar="REDUCTION[/FAMILY]", help="e.g. hmv_to_odamv/planted_yes, or hmv_to_oamv (all families)")
    g.add_argument("--n", type=int, help="source size n (required unless --cnf/--cnfgen)")
    g.add_argument("--count", type=int, help="number of instances (required unless --cnf/--cnfgen: then 1)")
    g.add_argument("--cnf", metavar="FILE", help="sat_to_*: the formula from a DIMACS file (one instance)")
    g.add_argument("--cnfgen", metavar="FAMILY", help="sat_to_*: a CNFgen family (optional dependency); its "
                   "parameters as --param, e.g. --cnfgen php --param pigeons=3 --param holes=2")
    g.add_argument("--seed", type=int, default=0, help="set seed (default 0)")
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a generator parameter (JSON value), e.g. tau=0.5; repeatable")
    g.add_argument("--no-reference", action="store_true", help="skip the reference backend's decoding")
    from attnspec.conformance.frontends.cli_conform import add_cluster_arguments

    add_cluster_arguments(g)
    g.set_defaults(func=run_generate)
    v = sub.add_parser("verify", help="re-derive and check a set")
    v.add_argument("directory")
    v.add_argument("--no-reference", action="store_true", help="skip re-running the reference backend")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=run_verify)
    r = sub.add_parser("run", help="judge a backend on a set")
    r.add_argument("directory")
    r.add_argument("--backend", required=True, help="built-in name or module:attr")
    r.add_argument("--isolation", choices=("process", "none"), default="process")
    r.add_argument("--timeout", type=float, default=60.0)
    r.add_argument("--no-judge", action="store_true", help="decode only; skip the certified judgement per output")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=run_run)


def _usage(msg: str) -> int:
    print(f"attnspec instances: {msg}", file=sys.stderr)
    return 2


def _params(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--param expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run_list(args: argparse.Namespace) -> int:
    from attnspec.reductions.registry import reductions

    for name, red in sorted(reductions().items()):
        print(f"{name}: {red.source_kind} -> {red.target_problem}; families: {', '.join(red.families)}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from attnspec.reductions.instance_sets import generate_set

    name, _, family = args.family.partition("/")
    formula_input = args.cnf is not None or args.cnfgen is not None
    if formula_input and (args.n is not None or args.count not in (None, 1) or family):
        return _usage("--cnf/--cnfgen give one formula: no /FAMILY, --n or --count other than 1")
    if not formula_input and (args.n is None or args.count is None):
        return _usage("--n and --count are required (unless --cnf FILE or --cnfgen FAMILY)")
    if formula_input:
        args.count = 1
    if (args.n is not None and args.n < 1) or args.count < 0 or args.seed < 0:
        return _usage("--n must be positive, --count and --seed non-negative")
    try:
        parameters = _params(args.param)
        if formula_input:
            from attnspec.reductions.sat_to_attention import INPUT_FAMILY, input_parameters

            parameters, args.n = input_parameters(args.cnf, args.cnfgen, parameters)
            family = INPUT_FAMILY
        source = f"--cnf {shlex.quote(args.cnf)}" if args.cnf is not None else f"--cnfgen {shlex.quote(args.cnfgen)}" \
            if args.cnfgen is not None else f"--n {args.n} --count {args.count}"
        command = (f"attnspec instances generate {shlex.quote(args.family)} {source} "
                   f"--seed {args.seed} --out {shlex.quote(args.out)}" + "".join(f" --param {shlex.quote(p)}" for p in args.param)
                   + (" --no-reference" if args.no_reference else ""))
        with contextlib.ExitStack() as stack:
            derive_many = None
            if getattr(args, "workers", None) or getattr(args, "scheduler", None):  # the instances derived on a cluster
                from attnspec.conformance.harness.distributed import cluster_client, derive_on

                derive_many = derive_on(stack.enter_context(cluster_client(args.workers, args.scheduler)))
            path = generate_set(name, family or "all", args.n, args.count, args.seed, args.out, parameters=parameters,
                                command=command, with_reference=not args.no_reference, derive_many=derive_many)
    except (ValueError, TypeError) as exc:
        return _usage(str(exc))
    print(f"wrote {args.count} instances: {path}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from attnspec.reductions.instance_sets import InstanceSetError, verify_set

    try:
        mismatches = verify_set(args.directory, with_reference=not args.no_reference)
    except InstanceSetError as exc:
        return _usage(f"refused: {exc}")
    if args.json:
        print(json.dumps({"ok": not mismatches, "mismatches": [m.__dict__ for m in mismatches]}, indent=1))
    else:
        for m in mismatches:
            print(f"MISMATCH {m}")
        print("verified: every instance re-derives" if not mismatches else f"{len(mismatches)} mismatch(es)")
    return 1 if mismatches else 0


def run_run(args: argparse.Namespace) -> int:
    from attnspec.conformance.harness.isolation import InProcessRunner, ProcessRunner
    from attnspec.reductions.instance_sets import InstanceSetError, run_set

    try:
        runner = ProcessRunner(args.backend, timeout=args.timeout) if args.isolation == "process" else \
            InProcessRunner(args.backend, timeout=args.timeout)
    except ValueError as exc:
        return _usage(str(exc))
    try:
        if runner.load_error:
            return _usage(f"backend {args.backend!r} could not be loaded: {runner.load_error}")
        results = run_set(args.directory, runner, judge=not args.no_judge)
    except InstanceSetError as exc:
        return _usage(f"refused: {exc}")
    finally:
        runner.close()
    caught = [r for r in results if r["status"] not in ("agree", "refused", "not_applicable")]
    if args.json:
        print(json.dumps({"caught": len(caught), "results": results}, indent=1, default=str))
    else:
        for r in results:
            worst = max((c["certified_error"] for c in r["calls"] if c["certified_error"] is not None), default=None)
            extra = r["refused"] or r["not_applicable"] or r["error"] or ""
            err = f"certified error {worst:.3g} / margin {r['margin']:.3g}" if worst is not None else f"margin {r['margin']:.3g}"
            print(f"{r['id']} {r['family']}: {r['status']} ({err}) {extra}".rstrip())
        print(f"{len(results)} instances, {len(caught)} caught")
    return 1 if caught else 0
