#!/usr/bin/env python3
"""ncu_summary.py: groups an `ncu --csv --page raw` kernel log of `eng_bench_cuda --profile` into
phases (a phase ends at each k_argmax, k_argmax_final or k_argmax_partials kernel: batch-1 decode step, 512-token prefill, batch-128
decode step) and prints, per phase, kernel time and DRAM bytes by kernel name.
Usage: ncu_summary.py NCU_CSV [BATCHES, e.g. 32,64: the decode batches profiled after the prefill]"""
import csv
import re
import sys
from collections import OrderedDict


def main():
    rows = list(csv.reader(open(sys.argv[1], errors="replace")))
    hdr_i = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
    hdr = rows[hdr_i]
    kn = hdr.index("Kernel Name")
    tcol = next(i for i, h in enumerate(hdr) if h.startswith("gpu__time_duration"))
    # the .sum column exactly: ncu also writes .avg/.max/.min (per DRAM unit), and the first of
    # those is not the kernel's bytes
    bcol = next((i for i, h in enumerate(hdr) if h == "dram__bytes_read.sum"), None)
    phases, cur = [], OrderedDict()
    for r in rows[hdr_i + 1:]:
        if len(r) <= tcol:
            continue
        try:
            t = float(r[tcol].replace(",", ""))
        except ValueError:
            continue  # units row
        name = re.sub(r"\(.*", "", r[kn]).replace("void ", "")
        name = re.sub(r"<.*", "", name).strip()
        b = float(r[bcol].replace(",", "")) if bcol is not None else 0.0
        e = cur.setdefault(name, [0, 0.0, 0.0])
        e[0] += 1
        e[1] += t
        e[2] += b
        if name in ("k_argmax", "k_argmax_final", "k_argmax_partials"):
            phases.append(cur)
            cur = OrderedDict()
    if cur:
        phases.append(cur)
    labels = ["batch-1 decode step (ctx 512)", "prefill 512 tokens"] + [
        f"batch-{b} decode step" for b in (sys.argv[2].split(",") if len(sys.argv) > 2 else ["128"])]
    for i, ph in enumerate(phases):
        tot = sum(v[1] for v in ph.values())
        byt = sum(v[2] for v in ph.values())
        n = sum(v[0] for v in ph.values())
        lab = labels[i] if i < len(labels) else f"phase {i}"
        print(f"== {lab}: {n} kernels, {tot / 1e3:.1f} us kernel time (ns units assumed), "
              f"{byt / 1e9:.2f} GB DRAM read, {byt / max(tot, 1):.0f} GB/s")
        for k, v in sorted(ph.items(), key=lambda kv: -kv[1][1]):
            print(f"   {k:28s} n={v[0]:4d} {v[1] / 1e3:9.1f} us  {v[2] / 1e6:9.1f} MB  "
                  f"{v[2] / max(v[1], 1):7.0f} GB/s  avg {v[1] / v[0] / 1e3:7.2f} us")


if __name__ == "__main__":
    main()
