#!/bin/bash
# Builds everything and runs every test; ends with "N passed, N failed"
# (counting test cases, from each test's JUnit XML). Exit code 0 only if all pass.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || { echo "0 passed, 1 failed"; exit 1; }

bazel test //... --jobs=2 "$@"
rc=$?

targets=$(bazel query 'tests(//...)' 2>/dev/null)
python3 - "$rc" $targets <<'PY'
import os, sys, xml.etree.ElementTree as ET
rc, targets = int(sys.argv[1]), sys.argv[2:]
if not targets:  # bazel query failed: nothing can be counted, so nothing passed
    print("no test targets found (bazel query 'tests(//...)' failed)")
    print("0 passed, 1 failed")
    sys.exit(1)
passed = failed = skipped = 0
for t in targets:
    pkg, name = t[2:].split(":")
    path = os.path.join("bazel-testlogs", pkg, name, "test.xml")
    if not os.path.exists(path):
        print(f"not run: {t}")
        failed += 1
        continue
    cases = ET.parse(path).getroot().iter("testcase")
    any_case = False
    for c in cases:
        any_case = True
        if c.find("failure") is not None or c.find("error") is not None:
            failed += 1
            print(f"FAILED: {t} {c.get('classname', '')}.{c.get('name', '')}")
        elif c.find("skipped") is not None or c.get("status") == "notrun":
            skipped += 1
            print(f"SKIPPED: {t} {c.get('classname', '')}.{c.get('name', '')}")
        else:
            passed += 1
    if not any_case:
        failed += 1
        print(f"no test cases: {t}")
if rc != 0 and failed == 0:
    failed = 1
    print(f"bazel test exited {rc}")
line = f"{passed} passed, {failed} failed"
if skipped:
    line += f", {skipped} skipped"
print(line)
sys.exit(0 if failed == 0 else 1)
PY
