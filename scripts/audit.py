"""Dependency audit: run pip-audit over the installed environment and say plainly what was checked.

pip-audit reports "No known vulnerabilities found" even when it could not reach the vulnerability
database for any package (every package is then "skipped"); this wrapper counts what was really
audited and prints an unmistakable line when nothing or only part was.
Exit codes: 0 nothing vulnerable among the audited packages, 1 vulnerabilities found, 3 pip-audit failed.
"""

from __future__ import annotations

import json
import subprocess
import sys


def main() -> int:
    proc = subprocess.run([sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner", "off"],
                          capture_output=True, text=True)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        print(f"AUDIT FAILED: pip-audit gave no report (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        return 3
    dependencies = report.get("dependencies", [])
    skipped = [d for d in dependencies if d.get("skip_reason")]
    audited = [d for d in dependencies if not d.get("skip_reason")]
    vulnerable = [d for d in audited if d.get("vulns")]
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixes = ", ".join(vuln.get("fix_versions", [])) or "no fix yet"
            print(f"VULNERABLE: {dep['name']} {dep['version']}: {vuln['id']} (fixed in: {fixes})")
    if not audited:
        print(f"AUDIT NOT DONE: the vulnerability database could not be reached; 0 of {len(dependencies)} "
              "installed packages were checked. Nothing is known about their vulnerabilities.")
    elif skipped:
        print(f"AUDIT PARTIAL: {len(audited)} of {len(dependencies)} packages checked; skipped: "
              + ", ".join(d["name"] for d in skipped[:20]) + (" ..." if len(skipped) > 20 else ""))
    if audited:
        print(f"audited {len(audited)} packages: {len(vulnerable)} with known vulnerabilities")
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main())
