"""Benchmark: how long `slic search` takes to answer one query, and where its start goes.

`slic search clip.mp4` is run the way a user runs it, a fresh Python process per call, in a checkout with a
built index (`dvc repro index`). Two ways, alternated `--repeats` times in one run on one machine:

    current              `slic search <query> -k 10`: the search path imports no torchvision (slic.models writes
                         the video-ResNet blocks, slic.data.clip_transform the evaluation transform)
    with_torchvision     the same call after `import torchvision`, what it imported before: its import pulls in
                         torch._dynamo (torchvision.ops imports torch._dynamo.utils)

Reported per way: the median and min wall seconds of the whole process (start, imports, reading the index and
the checkpoint, decoding the query's ten clips, the forward pass, the search, the table printed), and both
answers' first lines, which must be the same. Then `python -X importtime` of the search path's top imports, once
each in a fresh process: torch, torch and torchvision, pandas, faiss, av, and slic.search with what it imports.

    python bench/search_startup.py                       # the checkout's index, a sample UCF101 clip as query
    python bench/search_startup.py --checkout ../realrun --query path/to/clip.avi --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slic.machine import machine_info  # noqa: E402

DEFAULT_OUT = ROOT / "reports" / "bench" / "search_startup.json"
DEFAULT_QUERY = ROOT.parent / "shared" / "videos" / "bryanyzhu-tiny-ucf101" / "ucf101" / "Basketball" / \
    "v_Basketball_g01_c01.avi"
WAYS = {"current": "", "with_torchvision": "import torchvision; "}
IMPORTS = {"torch": "import torch", "torch and torchvision": "import torch; import torchvision",
           "pandas": "import pandas", "faiss": "import faiss", "av": "import av",
           "slic.search (with torch, pandas, faiss)": "import slic.search, slic.serving, slic.checkpoints"}


def run_search(checkout: Path, query: Path, prelude: str) -> tuple[float, str]:
    """One `slic search` in a fresh process (after `prelude`): its wall seconds and its first result line."""
    code = (f"{prelude}import sys; from slic.cli import main; "
            f"sys.exit(main(['search', {str(query)!r}, '-k', '10']))")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=checkout, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"slic search failed in {checkout}: {done.stderr.strip()[-500:]}")
    return seconds, done.stdout.splitlines()[2].strip()


def import_seconds(statement: str, checkout: Path) -> float:
    """Wall seconds of `statement` in a fresh process, less the bare interpreter's start."""
    def wall(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=checkout, check=True, capture_output=True)
        return time.perf_counter() - start

    return round(min(wall(statement) for _ in range(2)) - min(wall("pass") for _ in range(2)), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", type=Path, default=ROOT, help="a checkout with data/index built")
    parser.add_argument("--query", type=Path, default=DEFAULT_QUERY)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    checkout, query = args.checkout.resolve(), args.query.resolve()
    if not (checkout / "data" / "index" / "index.faiss").is_file():
        raise SystemExit(f"{checkout}: no data/index; run `dvc repro index` there first")
    if not query.is_file():
        raise SystemExit(f"{query}: no such video; pass --query")
    run_search(checkout, query, "")  # warm the page cache: the first call reads every file from disk
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    answers: dict[str, set[str]] = {way: set() for way in WAYS}
    for _ in range(args.repeats):  # alternated, so a slower minute of the machine hits both
        for way, prelude in WAYS.items():
            wall, first = run_search(checkout, query, prelude)
            seconds[way].append(round(wall, 3))
            answers[way].add(first)
    rows: dict[str, Any] = {way: {"median_s": round(statistics.median(s), 3), "min_s": min(s), "runs_s": s,
                                  "first_result": sorted(answers[way])} for way, s in seconds.items()}
    same = answers["current"] == answers["with_torchvision"] and len(answers["current"]) == 1
    report = {
        "what": "one `slic search <query> -k 10` in a fresh process, with and without importing torchvision",
        "query": query.name, "repeats": args.repeats, "ways": rows, "same_answer": same,
        "saved_s": round(rows["with_torchvision"]["median_s"] - rows["current"]["median_s"], 3),
        "imports_s": {name: import_seconds(statement, checkout) for name, statement in IMPORTS.items()},
        "machine": machine_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("ways", "same_answer", "saved_s", "imports_s")}, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
