"""Write a benchmark's table into a markdown file between its own begin/end markers (replacing
what was there), or append the marked block when the file has none yet."""

import re


def write_section(path, begin, end, text):
    doc = open(path).read()
    block = f"{begin}\n{text}{end}"
    if begin in doc:
        doc = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
    else:
        doc += f"\n{block}\n"
    open(path, "w").write(doc)
