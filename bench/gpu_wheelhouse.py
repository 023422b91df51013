"""What bench/gpu.py needs on a GPU machine without a network, in under 64 MiB: the folder .gpu-wheelhouse/.

The lent GPU machine has Python 3.12 with torch and torchvision and little else (no faiss, dvc, mlflow,
PyAV, OpenCV; no network), and receives the working tree plus the ignored folders a run carries, 64 MiB
in all. bench/gpu.py, its sections in bench/gpu_parts/ and the slic modules they reach import, beyond torch,
torchvision and the standard library, only the packages of `PACKAGES` (tests/test_bench_gpu.py runs its
quick version with nothing else importable, checks every import of that closure against `PACKAGES` and
`NOT_CARRIED`, and checks that each file of it, `local_modules`, travels with the working tree).

`build` (``make gpu-wheelhouse``) writes into .gpu-wheelhouse/ (git-ignored):

* the wheels of `PACKAGES` for CPython 3.12 manylinux x86_64, at the versions installed here:
  ``pip download --only-binary=:all: --python-version 3.12 --implementation cp --platform ... --no-deps``;
* requirements.txt (what bench/gpu_run.sh installs with ``pip install --no-index --find-links``);
* reference/flow_pairs.npz + .json: the grey frame pairs of bench/flow.py's real clips (decoding them needs
  PyAV and ../shared/videos) and OpenCV's TV-L1 flow of each pair at OpenCV's defaults (float16; needs
  opencv-contrib), so the GPU run can give tvl1_torch's end-point error against OpenCV;
* manifest.json: files, sizes, the total with the working tree, and the limit;

and refuses (exit 1, naming the largest files) when the working tree plus the folder exceed `LIMIT_MIB`.

Sizes of the CPython 3.12 wheels (pip download, 2026-11): numpy 2.4.6 15.9 MiB, faiss-cpu 1.15.1 18.0 MiB,
pandas 3.1.1 11.5 MiB, pyyaml 0.8 MiB, python-dateutil, tqdm, packaging and six 0.4 MiB together. Not
carried: opencv-contrib-python-headless 4.13 (59.3 MiB), scipy 1.17 (33.6 MiB), scikit-learn 1.9 (8.7 MiB,
needs scipy), faiss-gpu (larger still); bench/gpu.py replaces what it needs of them (`NOT_CARRIED` says how).

    python bench/gpu_wheelhouse.py build [--dest .gpu-wheelhouse] [--no-reference]
    python bench/gpu_wheelhouse.py check [--dest .gpu-wheelhouse]     # the size check alone
    python bench/gpu_wheelhouse.py install WHEELHOUSE TARGET          # no pip there: unpack what is missing

Only the standard library at module level: `install` runs on the GPU machine before anything is installed.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DEFAULT_DEST = ROOT / ".gpu-wheelhouse"
LIMIT_MIB = 60.0        # our limit: 4 MiB below what a run carries, for the run's own files
CARRY_LIMIT_MIB = 64.0  # what a run on the GPU machine carries at most (working tree + carried folders)
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_24_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_28_x86_64")


@dataclass(frozen=True)
class Package:
    """One carried distribution: its name on PyPI, the module it provides, and who needs it."""

    dist: str
    module: str
    needed_by: str


PACKAGES = (
    Package("numpy", "numpy", "everything (torchvision requires it too; carried in case the machine's is too old)"),
    Package("pandas", "pandas", "slic.data.frames / slic.data.clips / slic.data.datasets: index.csv and the manifest"),
    Package("python-dateutil", "dateutil", "pandas"),
    Package("six", "six", "python-dateutil"),
    Package("pyyaml", "yaml", "slic.config and slic.presets (the paper preset)"),
    Package("tqdm", "tqdm", "slic.data.flow.flow_all (the flow stage's progress bar)"),
    Package("faiss-cpu", "faiss", "slic.clustering's CPU path: the FINCH / k-means partitions the GPU ones are "
                                  "compared with, pretrain's clustering in the smoke, exact and IVF search on the CPU"),
    Package("packaging", "packaging", "faiss-cpu"),
)

# Modules the machine has with torch and torchvision (torchvision requires numpy and pillow).
WITH_TORCH = ("torch", "torchvision", "numpy", "PIL")

# Imports somewhere in bench/gpu.py's closure that are deliberately not carried, and why the bench never
# reaches them (or how it replaces them). tests/test_bench_gpu.py fails on any import not here nor carried.
NOT_CARRIED = {
    "scipy": "slic.clustering.components_of_neighbour_graph; the bench uses slic.torch_clustering.connected_components "
             "(same labels) and puts it in its place for the pretrain smoke",
    "sklearn": "slic.clustering.cluster_agreement (NMI/AMI for monitoring); slic.torch_clustering.cluster_agreement "
               "stands in for the smoke, adjusted_rand_index for the bench",
    "cv2": "slic.tvl1.tvl1_opencv and the flow stage's opencv method; the bench runs the torch method and brings "
           "OpenCV's flow as reference data",
    "av": "slic.data.video (decoding video files): the bench writes its frames directly as JPEG shards",
    "mlflow": "slic.tracking: only reached with an MLflow run; the bench calls the stages with run=None",
    "ruamel": "slic.presets.apply_preset (editing params.yaml); the bench reads the preset with load_preset",
    "psutil": "slic.tracking: system metrics of MLflow runs, not used by the bench",
}


class WheelhouseTooLarge(RuntimeError):
    """The working tree plus the wheelhouse would not fit what a run may carry."""


# --------------------------------------------------------------------------------------------- recipe


def installed_version(dist: str) -> str | None:
    """The version of `dist` installed in this interpreter, or None."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def requirements(packages: tuple[Package, ...] = PACKAGES) -> list[str]:
    """'dist==version' for each package, pinned to what is installed here (unpinned when it is not)."""
    return [f"{p.dist}=={v}" if (v := installed_version(p.dist)) else p.dist for p in packages]


def download_command(dest: Path, reqs: list[str], *, python: str = sys.executable) -> list[str]:
    """The pip command that fetches exactly `reqs` as CPython 3.12 manylinux x86_64 wheels into `dest`."""
    command = [python, "-m", "pip", "download", "--only-binary=:all:", "--no-deps", "--python-version",
               PYTHON_VERSION, "--implementation", "cp", "--dest", str(dest)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    return command + list(reqs)


def carried_files(root: Path = ROOT) -> list[Path]:
    """Files a run takes with the working tree: tracked ones and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            check=True, capture_output=True).stdout.decode().split("\0")
    return [root / name for name in listed if name and (root / name).is_file()]


def folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def check_size(parts: dict[str, list[Path]], *, limit_mib: float = LIMIT_MIB) -> dict[str, Any]:
    """Bytes per part and in all; raise WheelhouseTooLarge (naming the largest files) above `limit_mib`."""
    sizes = {name: sum(f.stat().st_size for f in files) for name, files in parts.items()}
    total = sum(sizes.values())
    report = {"bytes": sizes, "total_bytes": total, "total_mib": round(total / 2**20, 2), "limit_mib": limit_mib,
              "carry_limit_mib": CARRY_LIMIT_MIB}
    if total > limit_mib * 2**20:
        largest = sorted((f for files in parts.values() for f in files), key=lambda f: -f.stat().st_size)[:5]
        names = ", ".join(f"{f.name} ({f.stat().st_size / 2**20:.1f} MiB)" for f in largest)
        raise WheelhouseTooLarge(f"{total / 2**20:.1f} MiB to carry (working tree + wheelhouse) exceeds "
                                 f"{limit_mib:g} MiB; largest: {names}")
    return report


def size_parts(dest: Path, root: Path = ROOT) -> dict[str, list[Path]]:
    """What a GPU run carries: the working tree (without the wheelhouse itself, if not ignored) and `dest`."""
    inside = dest.resolve()
    tree = [f for f in carried_files(root) if inside not in f.resolve().parents]
    return {"working_tree": tree, "wheelhouse": folder_files(dest)}


# Top-level packages of this repository: an import of one is followed into its file (bench/ is a namespace
# package: bench/gpu.py imports its sections as bench.gpu_parts.*), never counted as third-party.
LOCAL_PACKAGES = ("slic", "bench")


def third_party_imports(entry: Path, root: Path = ROOT) -> dict[str, set[str]]:
    """Every non-stdlib, non-local module imported anywhere in `entry` and the slic and bench modules it reaches
    (at any depth, function bodies included): top-level name -> {'path:top' or 'path:function'} where it is
    imported."""
    return _import_closure(entry, root)[0]


def local_modules(entry: Path, root: Path = ROOT) -> set[Path]:
    """`entry` and every file of this repository's packages (`LOCAL_PACKAGES`) it reaches by imports, at any
    depth: what a run of `entry` needs from the working tree."""
    return _import_closure(entry, root)[1]


def _import_closure(entry: Path, root: Path) -> tuple[dict[str, set[str]], set[Path]]:
    found: dict[str, set[str]] = {}
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)

        def visit(node: ast.AST, nested: bool) -> None:
            for child in ast.iter_child_nodes(node):
                inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                names: list[str] = []
                if isinstance(child, ast.Import):
                    names = [alias.name for alias in child.names]
                elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                    names = [child.module] + [f"{child.module}.{alias.name}" for alias in child.names]
                for name in names:
                    top = name.split(".")[0]
                    if top in LOCAL_PACKAGES:
                        parts = name.split(".")
                        # importing a.b.c runs a/__init__.py and a/b/__init__.py first
                        todo.extend(init for k in range(1, len(parts))
                                    if (init := root.joinpath(*parts[:k], "__init__.py")).is_file())
                        while parts:
                            module = root.joinpath(*parts).with_suffix(".py")
                            package = root.joinpath(*parts, "__init__.py")
                            if module.is_file() or package.is_file():
                                todo.append(module if module.is_file() else package)
                                break
                            parts.pop()
                    elif top not in sys.stdlib_module_names and top != "__future__":
                        where = path.relative_to(root) if root in path.parents else path
                        found.setdefault(top, set()).add(f"{where}:{'function' if inner else 'top'}")
                visit(child, inner)

        visit(ast.parse(path.read_text(), filename=str(path)), False)
    return found, seen


# ----------------------------------------------------------------------------------- reference data


def write_flow_reference(dest: Path, firsts: list[Any], seconds: list[Any], *,
                         source: dict[str, Any]) -> dict[str, Any]:
    """reference/flow_pairs.npz (i0_g, i1_g uint8 grey pairs and flow_g, OpenCV's flow at its defaults, float16,
    per frame-size group g) and flow_pairs.json, for bench/gpu.py --reference."""
    import numpy as np

    from slic.tvl1 import TVL1Params, tvl1_opencv

    dest.mkdir(parents=True, exist_ok=True)
    params = TVL1Params()
    arrays: dict[str, Any] = {}
    for g, (a, b) in enumerate(zip(firsts, seconds)):
        arrays[f"i0_{g}"], arrays[f"i1_{g}"] = a.astype(np.uint8), b.astype(np.uint8)
        arrays[f"flow_{g}"] = tvl1_opencv(a, b, params).astype(np.float16)
    np.savez_compressed(dest / "flow_pairs.npz", **arrays)
    meta = {"groups": len(firsts), "pairs": int(sum(len(a) for a in firsts)),
            "frame_sizes": [f"{a.shape[1]}x{a.shape[2]}" for a in firsts], "tvl1": vars(params),
            "flow_dtype": "float16 (rounding error <= 0.004 px below 16 px of motion)", **source}
    (dest / "flow_pairs.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def prepare_reference(dest: Path, *, frames: int = 17, short_side: int = 64) -> dict[str, Any]:
    """OpenCV's flow for bench/flow.py's real clips (first `frames` frames at `short_side`), as it reads them."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_flow", ROOT / "bench" / "flow.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    firsts, seconds, used = module.real_pairs(frames, short_side)
    return write_flow_reference(dest, firsts, seconds, source={
        "source": "bench/flow.py real_pairs: ../shared/videos clips that decode with >= 32 frames",
        "frames_per_clip": frames, "short_side": short_side, "clips": sorted(used)})


# ------------------------------------------------------------------------------------------- install


def install(wheelhouse: Path, target: Path) -> list[str]:
    """Without pip: unpack the wheels whose module this interpreter cannot import into `target` (put it on
    PYTHONPATH). Wheels are zip files laid out as site-packages; no scripts or entry points are needed."""
    import importlib.util

    modules = {p.dist.replace("-", "_").lower(): p.module for p in PACKAGES}
    unpacked = []
    target.mkdir(parents=True, exist_ok=True)
    for wheel in sorted(wheelhouse.glob("*.whl")):
        dist = wheel.name.split("-")[0].lower()
        module = modules.get(dist, dist)
        if importlib.util.find_spec(module) is not None:
            continue
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
        unpacked.append(wheel.name)
    return unpacked


# ------------------------------------------------------------------ the GPU machine's environment, here


def distribution_closure(names: list[str]) -> set[str]:
    """`names` and every distribution they require (markers evaluated here, extras ignored), installed here."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(key)
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def shadow_site(dists: set[str], dest: Path) -> Path:
    """A folder of links to the installed files of `dists` only: with ``python -S`` and PYTHONPATH=dest, an
    interpreter sees the standard library and these distributions, as the GPU machine would."""
    from importlib import metadata

    dest.mkdir(parents=True, exist_ok=True)
    for name in sorted(dists):
        dist = metadata.distribution(name)
        base = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source, link = base / top, dest / top
            if source.exists() and not link.exists() and not top.endswith((".pth", "__pycache__")):
                link.symlink_to(source)
    return dest


# ---------------------------------------------------------------------------------------------- main


def build(dest: Path, *, reference: bool = True, limit_mib: float = LIMIT_MIB) -> dict[str, Any]:
    """Download the wheels, write the reference data, check the size; write manifest.json and return it."""
    dest.mkdir(parents=True, exist_ok=True)
    reqs = requirements()
    for old in dest.glob("*.whl"):
        old.unlink()
    subprocess.run(download_command(dest, reqs), check=True)
    (dest / "requirements.txt").write_text("".join(f"{r}\n" for r in reqs))
    meta = prepare_reference(dest / "reference") if reference else None
    manifest = {"python": PYTHON_VERSION, "platforms": list(PLATFORMS), "requirements": reqs,
                "packages": [vars(p) for p in PACKAGES],
                "wheels": {w.name: w.stat().st_size for w in sorted(dest.glob("*.whl"))},
                "reference": meta, "not_carried": NOT_CARRIED}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    manifest["size"] = check_size(size_parts(dest), limit_mib=limit_mib)
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("build", "check"):
        command = sub.add_parser(name)
        command.add_argument("--dest", type=Path, default=DEFAULT_DEST)
        command.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
        if name == "build":
            command.add_argument("--no-reference", action="store_true", help="skip the TV-L1 reference data")
    unpack = sub.add_parser("install")
    unpack.add_argument("wheelhouse", type=Path)
    unpack.add_argument("target", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            print("unpacked: " + (", ".join(install(args.wheelhouse, args.target)) or "nothing (all importable)"))
            return 0
        if args.command == "build":
            size = build(args.dest, reference=not args.no_reference, limit_mib=args.limit_mib)["size"]
        else:
            size = check_size(size_parts(args.dest), limit_mib=args.limit_mib)
    except WheelhouseTooLarge as exc:
        print(f"gpu_wheelhouse: {exc}", file=sys.stderr)
        return 1
    mib = {k: round(v / 2**20, 2) for k, v in size["bytes"].items()}
    print(f"gpu_wheelhouse: {size['total_mib']} MiB to carry ({mib}), limit {size['limit_mib']:g} MiB "
          f"(a run carries {CARRY_LIMIT_MIB:g})")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    sys.exit(main())
