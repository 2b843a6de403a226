#!/usr/bin/env python3
"""Judge an Autobahn|Testsuite fuzzingclient report (RFC 6455 conformance).

Usage: autobahn_check.py [--expect-reference] [--expect-cases N] REPORT_DIR

REPORT_DIR is the fuzzingclient `outdir` (wstest or kosoku); only its
`index.json` is read: {agent: {case_id: {"behavior": ..., "behaviorClose": ...}}}.

We parse the report ourselves because `wstest -m fuzzingclient` always exits
0, even when every case fails or the server was never reachable (its
index.json is then empty). This script is the pass/fail verdict.

A case passes when
  behavior      is OK, NON-STRICT or INFORMATIONAL, and
  behaviorClose is OK or INFORMATIONAL;
UNIMPLEMENTED is accepted in both only for 12.* and 13.* (permessage-deflate,
which we don't offer).

--expect-reference additionally holds the server to tungstenite 0.30's own
result, the project's bar: NON-STRICT exactly {6.4.3, 6.4.4}, INFORMATIONAL
exactly {7.1.6, 7.13.1, 7.13.2}, UNIMPLEMENTED only within 12.*/13.*. A case
that differs from that (even one that got *better*, e.g. 6.4.3 now OK) fails,
so that any change in behaviour is noticed and the reference updated on purpose.

--expect-cases N fails a report that holds other than N cases (a run cut
short, or kosoku/wstest selecting other cases than expected); the cases
missing count as failed.

Stdlib only. Exit status: 0 if everything passed, 1 otherwise, 2 on bad usage.
The last line printed is always `N passed, N failed`.
"""

import argparse
import collections
import json
import os
import sys

OK = "OK"
NON_STRICT = "NON-STRICT"
INFORMATIONAL = "INFORMATIONAL"
UNIMPLEMENTED = "UNIMPLEMENTED"
FAILED = "FAILED"

BEHAVIOR_OK = {OK, NON_STRICT, INFORMATIONAL}
CLOSE_OK = {OK, INFORMATIONAL}

# tungstenite 0.30's reference result (its autobahn-server example under
# wstest 25.10.1 / autobahn 0.10.9); every other case is OK, or UNIMPLEMENTED
# in 12.*/13.*.
REFERENCE = {
    NON_STRICT: {"6.4.3", "6.4.4"},
    INFORMATIONAL: {"7.1.6", "7.13.1", "7.13.2"},
}

SUMMARY_ROWS = [OK, NON_STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED, "other"]


def case_key(case_id):
    """Numeric sort key: 1.2.10 after 1.2.9."""
    key = []
    for part in str(case_id).split("."):
        key.append((0, int(part), "") if part.isdigit() else (1, 0, part))
    return key


def is_deflate_case(case_id):
    """12.* and 13.* exercise permessage-deflate."""
    return str(case_id).split(".")[0] in ("12", "13")


def row_of(value):
    return value if value in SUMMARY_ROWS else "other"


def load_index(report):
    """Return (cases, error). cases: list of (agent, case_id, entry)."""
    path = report
    if os.path.isdir(report):
        path = os.path.join(report, "index.json")
    if not os.path.isfile(path):
        return [], "no report: %s does not exist" % path
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        return [], "unreadable report %s: %s" % (path, e)
    if not isinstance(index, dict):
        return [], "malformed report %s: top level is not an object" % path
    cases = []
    for agent, agent_cases in index.items():
        if not isinstance(agent_cases, dict):
            return [], "malformed report %s: agent %r has no case map" % (path, agent)
        for case_id, entry in agent_cases.items():
            if not isinstance(entry, dict):
                entry = {}
            cases.append((agent, case_id, entry))
    if not cases:
        # What wstest leaves behind when it never reached the server.
        return [], "empty report %s: zero cases ran (was the server reachable?)" % path
    cases.sort(key=lambda c: (c[0], case_key(c[1])))
    return cases, None


def wrap_ids(ids, indent="    ", width=78):
    """Comma-separated ids, wrapped for the terminal."""
    lines, line = [], indent
    for i, cid in enumerate(ids):
        piece = cid + ("," if i < len(ids) - 1 else "")
        if len(line) + len(piece) + 1 > width and line.strip():
            lines.append(line.rstrip())
            line = indent
        line += piece + " "
    if line.strip():
        lines.append(line.rstrip())
    return "\n".join(lines) if lines else indent + "(none)"


def group_ids(ids):
    """Compact a long id list as e.g. `12.* (90), 13.* (126)`."""
    counts = collections.Counter(str(c).split(".")[0] for c in ids)
    return ", ".join(
        "%s.* (%d)" % (major, n) for major, n in sorted(counts.items(), key=lambda kv: case_key(kv[0]))
    )


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Fail unless an Autobahn fuzzingclient report shows RFC 6455 conformance."
    )
    parser.add_argument("report_dir", help="report directory holding index.json (or the index.json itself)")
    parser.add_argument(
        "--expect-reference",
        action="store_true",
        help="also require tungstenite 0.30's exact NON-STRICT/INFORMATIONAL/UNIMPLEMENTED sets",
    )
    parser.add_argument(
        "--expect-cases",
        type=int,
        metavar="N",
        help="fail unless the report holds exactly N cases (catches truncated runs)",
    )
    args = parser.parse_args(argv)

    cases, error = load_index(args.report_dir)
    if error:
        print("autobahn_check: FAIL: " + error)
        # Cases that should have run but didn't count as failed.
        print("0 passed, %d failed" % max(args.expect_cases or 0, 0))
        return 1

    agents = sorted({agent for agent, _, _ in cases})
    multi_agent = len(agents) > 1

    def label(agent, case_id):
        return "%s:%s" % (agent, case_id) if multi_agent else case_id

    behavior_counts = collections.Counter()
    close_counts = collections.Counter()
    raw_behavior = collections.Counter()
    raw_close = collections.Counter()
    by_behavior = collections.defaultdict(list)
    failures = []  # (label, behavior, behaviorClose, why)

    for agent, case_id, entry in cases:
        behavior = entry.get("behavior")
        close = entry.get("behaviorClose")
        behavior_counts[row_of(behavior)] += 1
        close_counts[row_of(close)] += 1
        raw_behavior[behavior] += 1
        raw_close[close] += 1
        by_behavior[behavior].append(label(agent, case_id))

        deflate = is_deflate_case(case_id)
        reasons = []
        if not (behavior in BEHAVIOR_OK or (deflate and behavior == UNIMPLEMENTED)):
            reasons.append("behavior not acceptable")
        if not (close in CLOSE_OK or (deflate and close == UNIMPLEMENTED)):
            reasons.append("behaviorClose not acceptable")
        if args.expect_reference and not reasons:
            if behavior == UNIMPLEMENTED:
                pass  # only reachable for 12.*/13.*, allowed by the reference
            else:
                expected = OK
                for kind, ids in REFERENCE.items():
                    if case_id in ids:
                        expected = kind
                if behavior != expected:
                    reasons.append("reference expects behavior %s" % expected)
        if reasons:
            failures.append((label(agent, case_id), behavior, close, "; ".join(reasons)))

    # Reference cases that are absent from the report altogether (e.g. a run
    # that excluded them): the sets can't match, but no case carries the blame.
    missing = []
    if args.expect_reference:
        present = collections.defaultdict(set)
        for agent, case_id, _ in cases:
            present[agent].add(case_id)
        for agent in agents:
            for kind, ids in REFERENCE.items():
                for cid in sorted(ids - present[agent], key=case_key):
                    missing.append("%s (reference expects %s)" % (label(agent, cid), kind))

    count_mismatch = None
    if args.expect_cases is not None and len(cases) != args.expect_cases:
        count_mismatch = "report holds %d cases, expected %d (truncated or filtered run?)" % (
            len(cases),
            args.expect_cases,
        )

    # --- report -----------------------------------------------------------
    print("Autobahn report: %s" % os.path.abspath(args.report_dir))
    print("Agent%s: %s" % ("s" if multi_agent else "", ", ".join(agents)))
    print()
    print("  %-15s %9s %14s" % ("result", "behavior", "behaviorClose"))
    print("  %-15s %9s %14s" % ("-" * 15, "-" * 9, "-" * 14))
    for row in SUMMARY_ROWS:
        print("  %-15s %9d %14d" % (row, behavior_counts[row], close_counts[row]))
    print("  %-15s %9d %14d" % ("total", len(cases), len(cases)))
    print()

    # Spell out what "other" stands for (e.g. kosoku's ERROR, wstest's
    # behaviorClose FAILED BY CLIENT / WRONG CODE / UNCLEAN).
    for column, counter in (("behavior", raw_behavior), ("behaviorClose", raw_close)):
        others = sorted((str(v), n) for v, n in counter.items() if row_of(v) == "other")
        if others:
            print("Other %s values: %s" % (column, ", ".join("%s (%d)" % o for o in others)))
    if any(row_of(v) == "other" for v in list(raw_behavior) + list(raw_close)):
        print()

    for kind in (NON_STRICT, INFORMATIONAL):
        ids = by_behavior.get(kind, [])
        print("%s (%d):" % (kind, len(ids)))
        print(wrap_ids(ids))
    unimpl = by_behavior.get(UNIMPLEMENTED, [])
    if unimpl:
        # 12.*/13.* (permessage-deflate) are expected en masse: count them by group.
        deflate = [c for c in unimpl if is_deflate_case(c.split(":")[-1])]
        rest = [c for c in unimpl if c not in deflate]
        shown = ([group_ids(c.split(":")[-1] for c in deflate)] if deflate else []) + rest
        print("%s (%d): %s" % (UNIMPLEMENTED, len(unimpl), ", ".join(shown)))
    print()

    if failures:
        print("FAILED cases (%d):" % len(failures))
        print("  %-10s %-15s %-17s %s" % ("case", "behavior", "behaviorClose", "why"))
        for name, behavior, close, why in failures:
            print("  %-10s %-15s %-17s %s" % (name, behavior, close, why))
        print("Details of each case: index.html in the report directory.")
        print()
    if missing:
        print("Reference cases missing from the report:")
        for m in missing:
            print("  " + m)
        print()
    if count_mismatch:
        print("autobahn_check: FAIL: " + count_mismatch)
        print()

    ok = not failures and not missing and not count_mismatch
    if args.expect_reference:
        print("Reference check (tungstenite 0.30): %s" % ("matches" if ok else "DIFFERS"))
    print("Verdict: %s" % ("PASS" if ok else "FAIL"))
    # Cases that should have run but are absent from the report count as failed.
    not_run = len(missing)
    if args.expect_cases is not None:
        not_run = max(not_run, args.expect_cases - len(cases))
    print("%d passed, %d failed" % (len(cases) - len(failures), len(failures) + not_run))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
