"""Load time and memory of a domains file: ferryman's compact DomainSet against a plain
Python set of the same names (what a naive loader holds).

    .venv/bin/python bench/domainset.py                  # 1,000,000 names
    .venv/bin/python bench/domainset.py --names 100000

Each measurement runs in a fresh interpreter so that RSS is not shared between them:
"rss added" is the resident size after loading minus before (the file already on disk,
the module already imported); "peak" is the process's maximum RSS during the load;
"lookup us" is the CPU time of one lookup of a 4-label host that is not in the set.
Names are generated reproducibly: a mix of exact hosts, ``.domain`` and ``*.domain``
entries, 2-4 labels, a fifth of them with a common prefix (www., cdn., ads., ...).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")

_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
from ferryman.pipeline.admit.domainset import DomainSet

def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()

path, mode = sys.argv[1], sys.argv[2]
before = rss()
t0 = time.perf_counter(); c0 = time.process_time()
if mode == "compact":
    ds = DomainSet.from_file(path)
    n = len(ds)
    probe = ds.matches
else:
    with open(path, encoding="utf-8") as fh:
        ds = {line.split("#")[0].strip().lower() for line in fh} - {""}
    n = len(ds)
    probe = ds.__contains__
elapsed = time.perf_counter() - t0; cpu = time.process_time() - c0
after = rss()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
hosts = ["www.host%d.example%d.com" % (i, i % 97) for i in range(20000)]
t1 = time.process_time()
for h in hosts:
    probe(h)
per = (time.process_time() - t1) / len(hosts)
print(json.dumps({"mode": mode, "entries": n, "load_s": elapsed, "rss_added": after - before, "cpu_s": cpu,
                  "peak": peak, "lookup_us": per * 1e6}))
"""

_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar "
    "papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu ad ads track metric "
    "pixel banner click count stat tag beacon"
).split()
_TLDS = ["com", "net", "org", "info", "io", "ru", "de", "co.uk", "xyz", "top", "biz", "fr"]
_PREFIX = ["www.", "cdn.", "ads.", "track.", "static.", "api.", "img."]


def generate(path: str, count: int, seed: int = 1) -> None:
    rnd = random.Random(seed)
    with open(path, "w", encoding="ascii") as fh:
        fh.write("# generated blocklist\n")
        for i in range(count):
            label = rnd.choice(_WORDS) + rnd.choice(_WORDS) + str(rnd.randrange(100000))
            name = f"{label}.{rnd.choice(_TLDS)}"
            if rnd.random() < 0.3:
                name = f"{rnd.choice(_WORDS)}{rnd.randrange(1000)}.{name}"
            if rnd.random() < 0.2:
                name = rnd.choice(_PREFIX) + name
            kind = i % 10
            if kind == 0:
                name = "." + name
            elif kind == 1:
                name = "*." + name
            fh.write(name + ("  # listed\n" if i % 1000 == 0 else "\n"))


def run(path: str, mode: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, path, mode, SRC], check=True, capture_output=True, text=True
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=2, help="best of N fresh processes per mode")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "domains.txt")
        generate(path, args.names)
        size = os.path.getsize(path)
        print(f"{args.names:,} names, file {size / 2**20:.1f} MiB")
        print(
            f"{'loader':<10} {'load s':>7} {'cpu s':>6} {'RSS added MiB':>14} {'peak MiB':>9}"
            f" {'lookup us':>10}"
        )
        for mode in ("compact", "set"):
            rows = [run(path, mode) for _ in range(args.rounds)]
            best = min(rows, key=lambda r: r["load_s"])
            rss = min(r["rss_added"] for r in rows)
            print(
                f"{mode:<10} {best['load_s']:>7.2f} {best['cpu_s']:>6.2f} {rss / 2**20:>14.1f}"
                f" {best['peak'] / 2**20:>9.1f} {best['lookup_us']:>10.2f}"
            )


if __name__ == "__main__":
    main()
