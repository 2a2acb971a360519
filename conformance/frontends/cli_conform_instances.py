"""``attnspec conform --backend X --instances DIR``: judge a backend on a hard-instance set.

Per instance (format and reductions: docs/reductions.md §4): the stored, hash-checked source instance is
rebuilt into its attention instances, sent to the backend through the usual runner and isolation, its
answers are decoded back into the source answer and compared with the stored one, and each target
output is judged by the certified judge, its certified error reported against the decoding margin
(:func:`attnspec.reductions.instance_sets.run_set`, as ``attnspec instances run`` does).

Before the backend runs, every stored answer is re-checked by brute force on the stored source arrays:
a set whose answers were tampered with would otherwise blame a correct backend, so it is refused
(exit 2) naming the instance and field. This check does not re-derive instances from their seeds
(that is ``attnspec instances verify``, which depends on numpy's generator streams).

Exit codes: 0 every judged instance agrees (refused and not-applicable instances are listed, not
judged), 1 any instance decodes wrong, faults or has a judged output that is not a pass, 2 bad usage,
a backend that cannot load, or a malformed, hostile or tampered set.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
JUDGED_OK = ("agree",)
NOT_JUDGED = ("refused", "not_applicable")
# conform options that select suite cases; they mean nothing on an instance set
SUITE_ONLY = {"dtype": "--dtype", "problem": "--problem", "case": "--case", "family": "--family", "keyword": "-k",
              "known_failures": "--known-failures", "junit": "--junit"}


def _usage(message: str) -> int:
    print(f"attnspec: {message}", file=sys.stderr)
    return EXIT_USAGE


def check_stored_answers(directory: str) -> None:
    """Raise :class:`InstanceSetError` when a stored array fails its SHA-256 or a stored answer is not
    the brute-force answer of the stored source instance (so a wrong verdict can never come from the set)."""
    from attnspec.conformance.harness.case_files import _sha256  # the set's own hash (dtype, shape, bytes)
    from attnspec.reductions.base import SourceAnswer
    from attnspec.reductions.instance_sets import InstanceSetError, load_arrays, load_manifest
    from attnspec.reductions.registry import get_reduction

    manifest = load_manifest(directory)
    reduction = get_reduction(manifest["reduction"])
    for record in manifest["instances"]:
        iid = record["id"]
        arrays = load_arrays(directory, record)
        for name, arr in arrays.items():
            if _sha256(arr) != record["arrays"][name]["sha256"]:
                raise InstanceSetError(f"instance {iid}: field 'arrays.{name}': the array does not match its SHA-256")
        try:
            source = reduction.source_from_files({k[7:]: v for k, v in arrays.items() if k.startswith("source_")},
                                                 record["source"]["params"])
            stored = SourceAnswer.from_json(record["answer"])
            truth = reduction.brute_force(source)
        except (ValueError, TypeError) as exc:
            raise InstanceSetError(f"instance {iid}: the stored source instance or answer is invalid: {str(exc)[:200]}") from None
        if stored.decision != truth.decision:
            raise InstanceSetError(f"instance {iid}: field 'answer.decision': stored {stored.decision} but brute force "
                                   f"on the stored instance gives {truth.decision}")
        if stored.witness != truth.witness:
            raise InstanceSetError(f"instance {iid}: field 'answer.witness': stored {stored.witness} but brute force "
                                   f"on the stored instance gives {truth.witness}")


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts by status, the instances caught, and the worst certified error as a fraction of its margin."""
    counts = Counter(r["status"] for r in results)
    caught = [r["id"] for r in results if r["status"] not in JUDGED_OK + NOT_JUDGED]
    worst = None
    for r in results:
        for c in r["calls"]:
            if c["certified_error"] is not None and r["margin"] > 0:
                frac = c["certified_error"] / r["margin"]
                worst = frac if worst is None else max(worst, frac)
    return {"total": len(results), "by_status": dict(sorted(counts.items())), "caught": caught,
            "judged": sum(counts[s] for s in counts if s not in NOT_JUDGED), "worst_error_over_margin": worst}


def conform_instances(args: argparse.Namespace) -> int:
    """The ``--instances`` branch of ``attnspec conform`` (module docstring)."""
    from attnspec.conformance.harness.isolation import InProcessRunner, ProcessRunner
    from attnspec.reductions.instance_sets import InstanceSetError, run_set

    given = [flag for attr, flag in SUITE_ONLY.items() if getattr(args, attr, None)]
    if given:
        return _usage(f"{', '.join(given)} select suite cases and do not apply with --instances")
    try:
        check_stored_answers(args.instances)
    except InstanceSetError as exc:
        return _usage(f"refused instance set {args.instances!r}: {exc}")
    try:
        runner = (ProcessRunner(args.backend, timeout=args.timeout, memory_limit_bytes=args.memory_limit)
                  if args.isolation == "process" else InProcessRunner(args.backend, timeout=args.timeout))
    except ValueError as exc:
        return _usage(str(exc))
    try:
        if runner.load_error:
            return _usage(f"cannot load backend {args.backend!r}: {runner.load_error}")
        results = run_set(args.instances, runner, judge=True)
    except InstanceSetError as exc:
        return _usage(f"refused instance set {args.instances!r}: {exc}")
    finally:
        runner.close()
    summary = summarize(results)
    if args.json:
        print(json.dumps({"backend": args.backend, "instances": args.instances, "summary": summary, "results": results},
                         indent=1, default=str))
    else:
        _print(results, summary, args)
    return EXIT_FAIL if summary["caught"] else EXIT_OK


def _print(results: list[dict[str, Any]], summary: dict[str, Any], args: argparse.Namespace) -> None:
    for r in results:
        worst = max((c["certified_error"] for c in r["calls"] if c["certified_error"] is not None), default=None)
        err = f"certified error {worst:.3g} / margin {r['margin']:.3g}" if worst is not None else f"margin {r['margin']:.3g}"
        extra = r["refused"] or r["not_applicable"] or r["error"] or ""
        bad = [c for c in r["calls"] if c["status"] not in (None, "pass", "not_applicable")]
        extra = extra or (bad[0]["message"].splitlines()[0][:160] if bad and bad[0]["message"] else "")
        print(f"{r['id']} {r['family']}: {r['status']} ({err}) {extra}".rstrip())
    by = ", ".join(f"{v} {k}" for k, v in summary["by_status"].items())
    worst = summary["worst_error_over_margin"]
    print(f"backend {args.backend} on {args.instances}: {summary['total']} instances ({by}); "
          f"{len(summary['caught'])} caught" + ("" if worst is None else f"; worst certified error / margin = {worst:.3g}"))
    if summary["judged"] == 0:
        print("  no instance was judged (all refused or not applicable): nothing was checked")


__all__ = ["conform_instances", "check_stored_answers", "summarize"]
