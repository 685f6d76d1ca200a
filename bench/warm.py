"""Times the variants of each case of bench/warm, interleaved, and prints medians and
ratios against each case's first variant (its baseline). Run as the test user:
    python3 warm.py N TITLE CASES_JSON
CASES_JSON: [{"name": ..., "variants": [[label, argv], ...]}, ...]."""
import json
import statistics
import subprocess
import sys
import time

n = int(sys.argv[1])
title = sys.argv[2]
cases = json.loads(sys.argv[3])


def run(argv):
    start = time.perf_counter_ns()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    elapsed = (time.perf_counter_ns() - start) / 1e6
    if done.returncode != 0:
        sys.exit(
            f"warm: {' '.join(argv)} failed ({done.returncode}):\n"
            + done.stderr.decode(errors="replace")
        )
    return elapsed


# One run of each first (binaries, page cache), not counted.
for case in cases:
    for _, argv in case["variants"]:
        run(argv)

times = {c["name"]: [[] for _ in c["variants"]] for c in cases}
for i in range(n):
    for case in cases:
        variants = list(enumerate(case["variants"]))
        # Rotate the order each round, so no variant always follows another.
        shift = i % len(variants)
        for slot, (_, argv) in variants[shift:] + variants[:shift]:
            times[case["name"]][slot].append(run(argv))

print(f"{title}")
print(f"N={n} rounds, interleaved, as the test user; median ms (x the first column)")
for case in cases:
    medians = [statistics.median(t) for t in times[case["name"]]]
    base = medians[0]
    cells = [f"{label} {m:.1f}" + ("" if k == 0 else f" ({m / base:.2f}x)")
             for k, ((label, _), m) in enumerate(zip(case["variants"], medians))]
    print(f"  {case['name']}: " + " | ".join(cells))
