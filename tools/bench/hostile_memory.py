#!/usr/bin/env python3
"""Peak memory of nnmend on each hostile input (the cases of tests/it/hostile.rs).

Runs the hostile tests once with NNMEND_HOSTILE_DIR set, so that every case keeps its
files and writes cases.jsonl (its command lines and expected exit codes); then replays
each command in a fresh child process and reads that child's own peak resident set
size from os.wait4 (ru_maxrss, KiB on Linux). Prints a Markdown table for docs/TESTING.md
and exits 1 when a case exits with another code or peaks at 1 GiB or more.

    python3 tools/bench/hostile_memory.py [--bin target/debug/nnmend] [--dir target/hostile]
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT_KIB = 1 << 20  # 1 GiB


def run_case(binary, case):
    """Runs one case's command; returns (exit code, peak RSS in KiB, seconds)."""
    import time

    start = time.monotonic()
    child = subprocess.Popen(
        [binary, *case["args"]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_maxrss, time.monotonic() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=str(ROOT / "target" / "debug" / "nnmend"))
    ap.add_argument("--dir", default=str(ROOT / "target" / "hostile"))
    ap.add_argument("--skip-tests", action="store_true", help="reuse the cases already in --dir")
    args = ap.parse_args()

    cases_dir = Path(args.dir).resolve()
    if not args.skip_tests:
        cases_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, NNMEND_HOSTILE_DIR=str(cases_dir))
        subprocess.run(
            ["cargo", "test", "--test", "it", "hostile::"], cwd=ROOT, env=env, check=True
        )

    cases = []
    for path in sorted(cases_dir.glob("*/cases.jsonl")):
        lines = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
        for k, case in enumerate(lines):
            if len(lines) > 1:
                case["name"] += f" #{k + 1}"
            cases.append(case)
    if not cases:
        sys.exit(f"no cases.jsonl under {cases_dir}")

    failed = False
    print("| case | command | exit code | peak RSS (MiB) |")
    print("|---|---|---|---|")
    for case in cases:
        code, kib, _ = run_case(args.bin, case)
        over = kib >= LIMIT_KIB
        wrong = code != case["code"]
        failed |= over or wrong
        note = " (expected %d)" % case["code"] if wrong else ""
        print(
            "| %s | `%s` | %d%s | %.1f%s |"
            % (case["name"], case["args"][0], code, note, kib / 1024, " **over 1 GiB**" if over else "")
        )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
