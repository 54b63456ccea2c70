#!/usr/bin/env python3
"""Prints a conformance summary (.ferrite/conformance/<suite>/summary.txt) as a Markdown table,
for docs/conformance.md: `conformance-table.py SUITE`."""
import re
import sys

rows = []
for line in open(f".ferrite/conformance/{sys.argv[1]}/summary.txt"):
    if line.startswith(("passed [It]", "failed [It]")):
        status, name = line.split(" ", 1)
        name = re.sub(r" \[sig-network[^\]]*\]$", "", name.replace("[It] ", "", 1).strip())
        rows.append((status, name))
rows.sort(key=lambda r: r[1])
bar = "\\|"
print("| result | spec |\n|---|---|")
for status, name in rows:
    print(f"| {status} | {name.replace('|', bar)} |")
passed = sum(1 for s, _ in rows if s == "passed")
print(f"\n{len(rows)} specs: {passed} passed, {len(rows) - passed} failed.", file=sys.stderr)
