"""Write a benchmark's table into a markdown file between its own begin/end markers (replacing
what was there), or append the marked block when the file has none yet; and the provenance
(UTC time, commit) every table states."""

import datetime
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def utc_now():
    """The time a table is stamped with: `YYYY-MM-DD HH:MM UTC`."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def commit():
    """The short hash of the checkout's HEAD, which a table's figures were measured at."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def publish(text, path, begin, end):
    """Print a benchmark's section, and write it into `path` (when given) between its markers."""
    print(text)
    if path:
        write_section(path, begin, end, text)


def write_section(path, begin, end, text):
    doc = open(path).read()
    block = f"{begin}\n{text}{end}"
    if begin in doc:
        doc = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
    else:
        doc += f"\n{block}\n"
    open(path, "w").write(doc)
