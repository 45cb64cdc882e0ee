"""Load benchmark of `slimformer serve`: 1, 8 and 32 concurrent clients on loopback, each sending
one SST-2 sentence per request for DURATION seconds, with dynamic batching (max batch 32) and
without (max batch 1). Prints throughput, p50/p99 latency and failures per setting as JSON and a
Markdown table. Each server runs in its own process, started and stopped here.

  .venv/bin/python benchmarks/serve_load.py MODEL_DIR [--duration 60] [--clients 1,8,32]
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

SST2_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "dev.tsv"


def sentences() -> list[str]:
    lines = SST2_DEV.read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0] for line in lines]


def start_server(model: str, port: int, max_batch: int, max_queue: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "slimformer.cli",
        "serve",
        model,
        "--port",
        str(port),
        "--max-batch-size",
        str(max_batch),
        "--max-queue",
        str(max_queue),
        "--max-wait-ms",
        "5",
        "--max-texts",
        str(min(64, max_queue)),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600  # a compiled model compiles at start-up
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(1)
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()[-2000:]}")
    raise RuntimeError("server did not become healthy in 600 s")


async def load(port: int, clients: int, duration: float, texts: list[str]) -> dict:
    latencies, codes = [], {}
    stop = time.perf_counter() + duration

    async def client(i: int) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            k = i
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = await c.post("/predict", json={"texts": [texts[k % len(texts)]]})
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - t0)
                except httpx.HTTPError as e:
                    codes[type(e).__name__] = codes.get(type(e).__name__, 0) + 1
                k += clients

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0] * 99
    return {
        "clients": clients,
        "requests_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(q[49] * 1000, 1),
        "p99_ms": round(q[98] * 1000, 1),
        "ok": len(latencies),
        "failed": sum(v for k, v in codes.items() if k != 200),
        "codes": {str(k): v for k, v in codes.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--overload", action="store_true", help="also: 64 clients vs a queue of 8")
    p.add_argument("--overload-only", action="store_true", help="only the overload run")
    args = p.parse_args()
    texts = sentences()
    results = []
    settings = (
        [] if args.overload_only else [("dynamic batching (max 32)", 32), ("batch size 1", 1)]
    )
    for label, max_batch in settings:
        proc = start_server(args.model, args.port, max_batch, 1024)
        try:
            for n in [int(x) for x in args.clients.split(",")]:
                row = asyncio.run(load(args.port, n, args.duration, texts))
                row["setting"] = label
                results.append(row)
                print(json.dumps(row), flush=True)
        finally:
            proc.terminate()
            proc.wait(60)
    if args.overload or args.overload_only:
        proc = start_server(args.model, args.port, 32, 8)
        try:
            row = asyncio.run(load(args.port, 64, args.duration / 2, texts))
            row["setting"] = "overload: 64 clients, queue bound 8"
            after = httpx.post(f"http://127.0.0.1:{args.port}/predict", json={"texts": ["fine"]})
            row["served_after_overload"] = after.status_code
            results.append(row)
            print(json.dumps(row), flush=True)
        finally:
            proc.terminate()
            proc.wait(60)
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in open("/proc/cpuinfo")
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    print(
        f"\nCPU: {cpu}, {os.cpu_count()} cores; model {args.model}; {args.duration:.0f} s per row\n"
    )
    print("| setting | clients | requests/s | p50 ms | p99 ms | failed |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['setting']} | {r['clients']} | {r['requests_per_s']} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {r['failed']} |"
        )


if __name__ == "__main__":
    main()
