#!/usr/bin/env python3
"""Sums an Nsight Compute CSV (gpu-check.sh's ncu-*.csv) by kernel: total
time, launches and time per launch, largest first.

    python3 benches/ncu-summary.py OUT/ncu-bf16.csv
"""
import collections
import csv
import sys

rows = list(csv.reader(open(sys.argv[1], errors="replace")))
header = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
names = rows[header]
name_at, value_at, unit_at = (names.index(c) for c in ("Kernel Name", "Metric Value", "Metric Unit"))
scale = {"ns": 1e-3, "nsecond": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}
total = collections.defaultdict(float)
count = collections.Counter()
for r in rows[header + 1:]:
    if len(r) <= value_at:
        continue
    name = r[name_at].split("(")[0][:70]
    total[name] += float(r[value_at].replace(",", "")) * scale[r[unit_at]]
    count[name] += 1
print(f"{sum(total.values()):10.1f} us in {sum(count.values())} kernels")
print(f"{'us':>10} {'launches':>8} {'us each':>8}  kernel")
for name, us in sorted(total.items(), key=lambda kv: -kv[1]):
    print(f"{us:10.1f} {count[name]:8d} {us / count[name]:8.2f}  {name}")
