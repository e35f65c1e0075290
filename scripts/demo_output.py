#!/usr/bin/env python3
"""Refresh the demo output pasted in docs/demo.md from a real run, so the page cannot go stale
silently: it runs a given wgspin binary's `demo` (default settings unless more arguments follow),
and writes what the run printed at its end (the table, the SFT plateaus, the paired comparison)
between the page's marker comments, with the commit and the CPU that printed it.

It builds nothing: pass the binary (e.g. target/release/wgspin after `cargo build --release`).

    python3 scripts/demo_output.py target/release/wgspin [--page docs/demo.md] [-- DEMO ARGS...]

The demo runs in a fresh temporary folder, so its default `--out wgspin-demo` (and the paths the
last line prints) are what a user sees, and nothing is left in the checkout.
"""

import argparse
import datetime
import os
import pathlib
import re
import subprocess
import sys
import tempfile

BEGIN = "<!-- demo-output:begin (written by scripts/demo_output.py; do not edit by hand) -->"
END = "<!-- demo-output:end -->"
REPO = pathlib.Path(__file__).resolve().parent.parent


def cpu() -> str:
    """`MODEL, N cores` from /proc/cpuinfo (Linux); `unknown CPU` elsewhere."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"unknown CPU, {os.cpu_count()} cores"
    models = re.findall(r"^model name\s*:\s*(.+)$", text, re.M)
    name = models[0].strip() if models else "unknown CPU"
    return f"{name}, {len(models) or os.cpu_count()} cores"


def commit() -> str:
    """The checkout's short commit, marked when what the binary is built from differs from it."""
    git = ["git", "-C", str(REPO)]
    head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown commit"
    built_from = ["src", "shaders", "Cargo.toml", "Cargo.lock", "build.rs"]
    status = subprocess.run(git + ["status", "--porcelain", "--", *built_from],
                            capture_output=True, text=True)
    dirty = bool(status.stdout.strip())
    return head.stdout.strip() + (" with uncommitted changes" if dirty else "")


def final_block(log: str) -> str:
    """The end of the run: from the last table header through the `done in` line."""
    lines = log.splitlines()
    headers = [i for i, l in enumerate(lines) if re.match(r"seed\s+stage\s+exact match", l)]
    done = [i for i, l in enumerate(lines) if l.startswith("done in ")]
    if not headers or not done or done[-1] < headers[-1]:
        raise SystemExit("the demo's output has no final table and `done in` line:\n" + log[-3000:])
    return "\n".join(l.rstrip() for l in lines[headers[-1] : done[-1] + 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wgspin", help="the wgspin binary to run (built beforehand)")
    ap.add_argument("--page", default=str(REPO / "docs" / "demo.md"), help="the page to update")
    ap.add_argument("demo_args", nargs="*", help="extra arguments for `wgspin demo` (after --)")
    args = ap.parse_args()
    binary = pathlib.Path(args.wgspin).resolve()
    page = pathlib.Path(args.page)
    text = page.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"{page} needs exactly one pair of markers:\n{BEGIN}\n{END}")

    command = ["wgspin", "demo", *args.demo_args]
    with tempfile.TemporaryDirectory(prefix="wgspin-demo-output-") as tmp:
        run = subprocess.run([str(binary), "demo", *args.demo_args], cwd=tmp,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({run.returncode}):\n{run.stdout[-3000:]}")
    block = final_block(run.stdout)

    today = datetime.date.today().isoformat()
    new = (f"{BEGIN}\n"
           f"What `{' '.join(command)}` printed at its end at commit {commit()} on {cpu()} "
           f"({today}, binary `{args.wgspin}`):\n\n```\n{block}\n```\n{END}")
    text = page.read_text()  # again: the page may have been edited during the run
    start, end = text.index(BEGIN), text.index(END) + len(END)
    page.write_text(text[:start] + new + text[end:])
    print(f"{page}: demo output of commit {commit()} on {cpu()} written", file=sys.stderr)


if __name__ == "__main__":
    main()
