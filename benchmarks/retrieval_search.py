"""Retrieval search: exact top-k (tinyldm's chunked matmul) against the plain matmul it is built on, and FAISS indexes.

For each database size N (``--sizes``, default 10k, 100k and 1M) and width d (``--dims``, default 128 and 512):

* the data: N synthetic unit embeddings drawn around N / 100 random centres (clusters, as image embeddings have;
  uniform random vectors in high dimension have no near neighbours, and no index can find what is not there), and
  ``--queries`` (64) queries drawn the same way;
* **exact**: ``Database.search(queries, k)``, the chunked matmul with a running top-k. Its time is compared with the
  plain product ``queries @ embeddings.T`` alone, timed interleaved in the same process: exact search is
  compute-bound (2 * q * N * d FLOPs), so the ratio says what the chunking and the top-k cost on top of the product.
  Memory: the database's own bytes (embeddings and ids) against the embeddings' size;
* **FAISS** flat (exact, inner product), IVF (``nlist`` = sqrt(N) cells, ``nprobe`` 16 and 64) and HNSW (M = 32,
  efConstruction 80, efSearch 64 and 128): build time, index bytes, query time for the same batch, and recall@k
  against exact search (the share of the true k nearest that the index returns).

Ratios: exact / matmul, and each index's speed-up over exact search. Timings are medians of ``--repeats`` runs.

Command and time (2 CPU cores, quiet machine):

    .venv/bin/python benchmarks/retrieval_search.py             # ~15-25 min (HNSW on 1M x 512 is most of it)
    .venv/bin/python benchmarks/retrieval_search.py --sizes 10000,100000   # ~2 min
    .venv/bin/python benchmarks/retrieval_search.py --quick     # smoke test, seconds
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
import torch.nn.functional as F

import _common as C
from tinyldm.retrieval import Database


def clustered(n: int, d: int, generator: torch.Generator, centres: torch.Tensor) -> torch.Tensor:
    """Unit vectors around ``centres``, made in blocks so that 1M x 512 needs no second copy."""
    out = torch.empty(n, d)
    for start in range(0, n, 65536):
        m = min(65536, n - start)
        pick = torch.randint(len(centres), (m,), generator=generator)
        out[start:start + m] = F.normalize(centres[pick] + 0.35 * torch.randn(m, d, generator=generator), dim=-1)
    return out


def recall(found: torch.Tensor, exact: torch.Tensor) -> float:
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact))
    return hits / exact.numel()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--dims", default="128,512")
    p.add_argument("--queries", type=int, default=64)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-hnsw-above", type=int, default=10**9,
                   help="skip HNSW for databases larger than this (its build is the slowest part)")
    C.add_common_args(p)
    args = p.parse_args()
    device = C.setup(args)
    sizes = [1000, 5000] if args.quick else [int(v) for v in args.sizes.split(",")]
    dims = [32] if args.quick else [int(v) for v in args.dims.split(",")]
    repeats = 2 if args.quick else args.repeats
    C.banner("Retrieval search: exact top-k vs. plain matmul, and FAISS indexes", device)
    rows, index_rows = [], []
    for d in dims:
        for n in sizes:
            g = torch.Generator().manual_seed(0)
            centres = torch.randn(max(1, n // 100), d, generator=g)
            db = Database(clustered(n, d, g, centres), normalize=False)
            queries = clustered(args.queries, d, g, centres)
            emb = db.embeddings
            times = C.interleaved_medians({"matmul": lambda: queries @ emb.T,
                                           "exact": lambda: db.search(queries, args.k)}, device, repeats)
            t_mm, t_exact = C.median(times["matmul"]), C.median(times["exact"])
            gflop = 2 * args.queries * n * d / 1e9
            own = emb.numel() * emb.element_size()
            rows.append([f"{n:,}", d, f"{gflop:.2f}", C.spread(times["matmul"]), C.spread(times["exact"]),
                         f"{t_exact / t_mm:.2f}x", f"{gflop / t_exact:.0f}", f"{own / 2**20:.0f}",
                         f"{db.nbytes / own:.3f}x"])
            print(f"N={n:,} d={d}: exact {C.spread(times['exact'])} vs matmul {C.spread(times['matmul'])} "
                  f"-> {t_exact / t_mm:.2f}x; memory {db.nbytes / own:.3f}x the embeddings", flush=True)
            _, exact = db.search(queries, args.k)
            settings = [("flat", {}, {}), ("ivf", {"nprobe": 16}, {"nprobe": 64})]
            if n <= args.no_hnsw_above:
                settings.append(("hnsw", {"ef_search": 64}, {"ef_search": 128}))
            for kind, first, second in settings:
                start = time.perf_counter()
                index = db.use_index(kind, **first)
                built = time.perf_counter() - start
                for params in ([first, second] if second else [first]):
                    if params:
                        index.set(**params)
                    t = C.median(C.interleaved_medians({"q": lambda: db.search(queries, args.k)}, device,
                                                       repeats)["q"])
                    r = recall(db.search(queries, args.k)[1], exact)
                    index_rows.append([f"{n:,}", d, kind, ", ".join(f"{a}={b}" for a, b in index.params.items()),
                                       f"{built:.1f} s", f"{index.nbytes / own:.2f}x", f"{t * 1e3:.2f} ms",
                                       f"{t_exact / t:.1f}x", f"{r:.3f}"])
                    print(f"  {kind} {index.params}: build {built:.1f} s, {index.nbytes / own:.2f}x memory, "
                          f"query {t * 1e3:.2f} ms ({t_exact / t:.1f}x exact), recall@{args.k} {r:.3f}", flush=True)
                db.index = None
                del index
                gc.collect()
            del db, emb
            gc.collect()
    print()
    print(f"Exact search ({args.queries} queries, k = {args.k}) against the plain product queries @ embeddings.T:")
    print(C.markdown_table(["N", "d", "GFLOP", "matmul", "exact search", "exact / matmul", "GFLOP/s",
                            "embeddings MiB", "memory / embeddings"], rows))
    print()
    print(f"FAISS indexes (recall@{args.k} against exact search; speed-up = exact time / index time):")
    print(C.markdown_table(["N", "d", "index", "params", "build", "bytes / embeddings", "query", "speed-up",
                            f"recall@{args.k}"], index_rows))
    C.footer([], args.quick)


if __name__ == "__main__":
    main()
