"""Benchmark: one search by `slic serve` (the index and encoder held in memory) against `slic search` in a fresh
process, the way an application without the service would shell out for each query.

In a checkout with a built index (`dvc repro index`), the same queries are answered both ways, alternated query by
query on one machine:

    process     `slic search <query> -k 10 --json` in a fresh Python process: start, imports, reading the index and
                the checkpoint, decoding and embedding the query, the search
    service     POST /search {"paths": [<query>], "k": 10} to one `slic serve` started before the first query:
                decoding and embedding the query, the search, the JSON over HTTP

Reported per way: the median, min and max wall seconds per query and every query's time; the service's start (from
launch to its first answer of /health); and whether both ways gave every query the same hits in the same order.

    python bench/search_service.py --checkout ../fresh --queries ../shared/real/ucf101_6/videos --count 12
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slic.machine import machine_info  # noqa: E402

DEFAULT_OUT = ROOT / "reports" / "bench" / "search_service.json"
DEFAULT_QUERIES = ROOT.parent / "shared" / "real" / "ucf101_6" / "videos"
LISTENING = re.compile(r"on http://([\d.]+):(\d+) ")


def queries_from(folder: Path, count: int) -> list[Path]:
    """`count` videos spread over the folder's sorted video files (every n-th), so classes differ."""
    videos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".avi", ".mp4", ".mov", ".mkv", ".webm"))
    if len(videos) < count:
        raise SystemExit(f"{folder}: {len(videos)} videos, fewer than --count {count}")
    step = len(videos) // count
    return [videos[i * step] for i in range(count)]


def by_process(checkout: Path, query: Path) -> tuple[float, list[str]]:
    """Wall seconds of one `slic search --json` process, and its hits' paths."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "slic.cli", "search", str(query), "-k", "10", "--json"],
                          cwd=checkout, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"slic search failed in {checkout}: {done.stderr.strip()[-500:]}")
    return seconds, [hit["path"] for hit in json.loads(done.stdout)["queries"][0]["results"]]


def request(address: tuple[str, int], method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    connection = http.client.HTTPConnection(*address, timeout=600)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        if response.status != 200:
            raise SystemExit(f"slic serve answered {response.status}: {answer.get('error')}")
        return answer
    finally:
        connection.close()


def by_service(address: tuple[str, int], query: Path) -> tuple[float, list[str]]:
    """Wall seconds of one POST /search, and its hits' paths."""
    start = time.perf_counter()
    answer = request(address, "POST", "/search", {"paths": [str(query)], "k": 10})
    return time.perf_counter() - start, [hit["path"] for hit in answer["queries"][0]["results"]]


def start_service(checkout: Path) -> tuple[subprocess.Popen[str], tuple[str, int], float]:
    """`slic serve --port 0` in the checkout: the process, its address, and seconds until /health answered."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "slic.cli", "serve", "--port", "0"], cwd=checkout,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    found = LISTENING.search(line)
    if found is None:
        process.kill()
        raise SystemExit(f"slic serve did not start: {line.strip()} {process.stderr.read() if process.stderr else ''}")
    address = (found.group(1), int(found.group(2)))
    request(address, "GET", "/health")
    return process, address, time.perf_counter() - start


def summary(seconds: list[float]) -> dict[str, Any]:
    return {"median_s": round(statistics.median(seconds), 3), "min_s": round(min(seconds), 3),
            "max_s": round(max(seconds), 3), "runs_s": [round(s, 3) for s in seconds]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", type=Path, default=ROOT, help="a checkout with a built index")
    parser.add_argument("--queries", type=Path, default=DEFAULT_QUERIES, help="a folder of query videos")
    parser.add_argument("--count", type=int, default=12, help="queries, each asked both ways")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    queries = queries_from(args.queries, args.count)
    process, address, started = start_service(args.checkout)
    times: dict[str, list[float]] = {"process": [], "service": []}
    same = True
    try:
        for query in queries:
            seconds, by_cli = by_process(args.checkout, query)
            times["process"].append(seconds)
            seconds, served = by_service(address, query)
            times["service"].append(seconds)
            same &= by_cli == served
    finally:
        process.terminate()
        process.wait(timeout=30)
    report = {"what": "one search of the index: `slic search --json` in a fresh process per query against POST "
                      "/search to one `slic serve`", "checkout": os.path.relpath(args.checkout, ROOT),
              "queries_folder": os.path.relpath(args.queries, ROOT),
              "queries": [q.relative_to(args.queries).as_posix() for q in queries],
              "service_start_s": round(started, 3), "ways": {way: summary(values) for way, values in times.items()},
              "same_answers": same, "machine": machine_info()}
    report["speedup_median"] = round(report["ways"]["process"]["median_s"] / report["ways"]["service"]["median_s"], 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"process {report['ways']['process']['median_s']} s, service {report['ways']['service']['median_s']} s per "
          f"query (median of {len(queries)}; {report['speedup_median']}x), service start {started:.1f} s, same answers "
          f"{same} -> {args.out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
