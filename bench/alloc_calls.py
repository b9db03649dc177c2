#!/usr/bin/env python3
"""Heap allocations per request from a callgrind profile (bench/callgrind.sh).

  alloc_calls.py CALLGRIND_OUT REQUESTS [TOP]

Counts the calls into mimalloc's allocation entry points made from outside
the allocator (keygate's global allocator is mimalloc), divided by REQUESTS;
with TOP, also the TOP callers that allocate most.
"""

import collections
import re
import sys

ALLOC = re.compile(r"^(mi_malloc|mi_zalloc|mi_calloc|mi_realloc)(_aligned)?$")
INSIDE = re.compile(r"^_?mi_")


def main():
    path, requests = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    names = {}

    def name(token):
        m = re.match(r"\((\d+)\)(?: (.*))?", token)
        if not m:
            return token
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), m.group(1))

    fn = cfn = None
    total = 0
    callers = collections.Counter()
    with open(path) as f:
        for line in f:
            if line.startswith("fn="):
                fn = name(line[3:].strip())
            elif line.startswith("cfn="):
                cfn = name(line[4:].strip())
            elif line.startswith("calls=") and cfn is not None:
                calls = int(line.split("=", 1)[1].split()[0])
                if ALLOC.match(cfn) and not (fn and INSIDE.match(fn)):
                    total += calls
                    callers[fn] += calls
                cfn = None
    print("%.1f heap allocations per request" % (total / max(requests, 1)))
    for caller, calls in callers.most_common(top):
        print("  %5.2f  %s" % (calls / requests, caller[:140]))


if __name__ == "__main__":
    main()
