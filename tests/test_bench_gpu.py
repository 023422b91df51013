"""bench/gpu.py runs (its quick CPU version) with only what .gpu-wheelhouse/ carries, and the wheelhouse recipe holds.

The quick run is the GPU machine rehearsed here: an interpreter started with ``-S`` whose only third-party
packages are links to torch, torchvision, their dependencies and bench/gpu_wheelhouse.py's PACKAGES, so a
new import of scipy, scikit-learn, OpenCV, PyAV or MLflow on the bench's path fails this test instead of
the one GPU visit.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.test_code_health import machine_paths

ROOT = Path(__file__).resolve().parents[1]


def bench_module(name: str) -> ModuleType:
    """bench/<name>.py as a module (bench/ is not a package)."""
    key = f"bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "bench" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The quick run's report, run with nothing importable beyond the carried packages and a tiny TV-L1 reference."""
    pytest.importorskip("cv2")  # the reference flow is made here with OpenCV, as `make gpu-wheelhouse` does
    wheelhouse = bench_module("gpu_wheelhouse")
    tmp = tmp_path_factory.mktemp("bench_gpu")
    dists = wheelhouse.distribution_closure(["torch", "torchvision"] + [p.dist for p in wheelhouse.PACKAGES])
    site = wheelhouse.shadow_site(dists, tmp / "site")
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (10, 12)).repeat(4, 0).repeat(4, 1).astype(np.float64)
    frames = np.stack([np.roll(texture, (t, 2 * t), axis=(0, 1)) for t in range(4)]).clip(0, 255).astype(np.uint8)
    wheelhouse.write_flow_reference(tmp / "reference", [frames[:-1]], [frames[1:]], source={"source": "test texture"})
    out = tmp / "gpu.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), PYTHONNOUSERSITE="1")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-S", str(ROOT / "bench" / "gpu.py"), "--quick", "--out", str(out),
                           "--reference", str(tmp / "reference"), "--budget", "150", "--work", str(tmp / "work")],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    report["_wall_s"] = time.perf_counter() - started
    report["_file"] = str(out)
    return report


def test_quick_run_completes_every_section_with_only_the_carried_packages(quick_report: dict) -> None:
    report = quick_report
    assert report["device"] == "cpu" and report["mode"] == "quick"
    assert report["environment"]["importable"] == {"numpy": True, "pandas": True, "yaml": True, "tqdm": True,
                                                   "faiss": True, "scipy": False, "sklearn": False, "cv2": False,
                                                   "av": False, "mlflow": False}
    statuses = report["status"]
    assert statuses.pop("pretrain_throughput_compiled") == "skipped"  # compile: CUDA only
    assert statuses == dict.fromkeys(["setup", "pretrain_throughput", "stage_smoke", "gpu_data_path", "tvl1",
                                      "clustering", "search", "flow_stage", "learning_at_scale"], "ok"), \
        {k: report[k].get("error") for k in statuses}


def test_quick_run_measures_what_the_gpu_run_reports(quick_report: dict) -> None:
    report = quick_report
    rows = report["pretrain_throughput"]["rows"]
    assert rows and all(r["model"]["clips_per_s"] > 0 for r in rows)
    waited = report["pretrain_throughput"]["host_wait_each_step"]  # the step as it was, beside it
    assert waited["batch"] == rows[-1]["batch"] and waited["clips_per_s"] > 0 and waited["share_of_sync_free"] > 0
    loaders = report["pretrain_throughput"]["end_to_end"]
    assert [(r["loader"], r["prefetch"]) for r in loaders] == [("uint8", True), ("float32", False),
                                                               ("gpu_decode", True)]
    assert all(r["clips_per_s"] > 0 and 0 <= r["data_wait_fraction"] <= 1 and r["steps"] >= 2
               and r["share_of_model"] > 0 for r in loaders), loaders
    assert report["pretrain_throughput"]["flops_per_clip"]["forward_backward"] > 0
    assert report["pretrain_throughput"]["sync_check"]["status"] == "skipped"  # CUDA's sync debug mode: GPU only
    smoke = report["stage_smoke"]
    assert set(smoke["stages"]) == {"flow", "pretrain", "pretrain_gpu_decode", "embed", "evaluate", "linear_probe",
                                    "finetune"}
    assert smoke["effective"]["pretrain"]["objective"] == "triplet"  # the paper preset, scaled
    assert smoke["stages"]["pretrain"]["flow_view_p"] == 0.25 and smoke["stages"]["pretrain"]["epochs"] == 2
    assert any("scipy" in s for s in smoke["substitutes"]) and any("scikit-learn" in s for s in smoke["substitutes"])
    same = report["gpu_data_path"]["same_draws_difference"]
    assert same["decoded_identical"] and same["normalised_max_abs"] == 0.0
    agreement = report["clustering"]["cpu_agreement"]
    assert agreement["finch_identical"] and agreement["finch_ari"] == 1.0
    for size in report["clustering"]["sizes"]:  # FINCH with the blocks in TF32 / bf16, rescored: the same partition
        assert {p: (c["identical_to_fp32"], c["ari_vs_fp32"]) for p, c in size["tensor_cores"].items()} == \
            {"tf32": (True, 1.0), "bf16": (True, 1.0)}
        assert all(c["finch_s"] >= 0 and c["gemm_s"] >= 0 for c in size["tensor_cores"].values())  # timed (a tiny GEMM may round to 0)
    assert agreement["kmeans_ari_same_init_cpu"] == 1.0
    assert all(s["flat_device"]["recall_at_10_vs_faiss_cpu"] == 1.0 for s in report["search"]["sizes"])
    scale = report["learning_at_scale"]  # the synthetic default rendered to shards, the modes trained and ranked
    assert all(scale["data"]["splits"][split] > 0 for split in ("train", "val", "test"))
    assert set(scale["rows"]) == {"random_init", "intra_video", "slic"}
    assert scale["settings"]["cluster_interval"] == scale["settings"]["eval_interval"] == 1
    assert all(r["status"] == "ok" and 0 < r["recall@1"] <= 100 for r in scale["rows"].values())
    assert scale["rows"]["slic"]["cluster_ami"] and scale["rows"]["intra_video"]["cluster_ami"] == []
    assert sorted(scale["order"]) == sorted(scale["rows"]) and scale["cpu_default"]["order"]
    assert set(scale["slic_minus_intra_video"]) == {"here", "cpu_default"}
    assert [r["batch_pairs"] for r in report["flow_stage"]["rows"]] == [8, 64]
    assert all(r["pairs"] > 0 and r["pairs_per_s"] > 0 for r in report["flow_stage"]["rows"])
    flow = report["tvl1"]
    assert flow["inputs"]["source"] == "test texture" and flow["inputs"]["reference"]
    first = flow["rows"][0]
    assert first["setting"] == "opencv_defaults" and first["epe_vs_opencv"]["mean"] < 0.1
    assert first["epe_vs_torch_cpu"]["mean"] == 0.0


def test_report_names_no_machine_paths(quick_report: dict) -> None:
    assert machine_paths(Path(quick_report["_file"])) == []


def test_imports_of_the_bench_closure_are_carried_or_explained() -> None:
    wheelhouse = bench_module("gpu_wheelhouse")
    found = wheelhouse.third_party_imports(ROOT / "bench" / "gpu.py")
    carried = {p.module for p in wheelhouse.PACKAGES}
    unexplained = {name: sorted(where) for name, where in found.items()
                   if name not in carried and name not in wheelhouse.WITH_TORCH and name not in wheelhouse.NOT_CARRIED}
    assert not unexplained, f"imported on bench/gpu.py's path but neither carried nor in NOT_CARRIED: {unexplained}"
    assert {"numpy", "pandas", "yaml", "tqdm", "faiss"} <= set(found)  # each carried module is used
    assert not set(wheelhouse.NOT_CARRIED) & carried
    assert "bench" not in found  # bench.gpu_parts.* is followed as the repository's own code, not third-party


def test_every_file_the_bench_imports_is_carried() -> None:
    """bench/gpu.py's sections live in bench/gpu_parts/: the closure follows them, and a GPU run carries each file."""
    wheelhouse = bench_module("gpu_wheelhouse")
    reached = {str(p.relative_to(ROOT)) for p in wheelhouse.local_modules(ROOT / "bench" / "gpu.py")}
    parts = {str(p.relative_to(ROOT)) for p in (ROOT / "bench" / "gpu_parts").glob("*.py")}
    assert {"bench/gpu_parts/run.py", "bench/gpu_parts/smoke.py", "bench/gpu_parts/tvl1.py"} <= parts
    assert parts <= reached, f"never imported by bench/gpu.py: {sorted(parts - reached)}"
    assert {"bench/gpu.py", "slic/__init__.py", "slic/pretrain.py", "slic/torch_clustering.py"} <= reached
    carried = {str(p.relative_to(ROOT)) for p in wheelhouse.carried_files(ROOT)}
    assert not reached - carried, f"imported by bench/gpu.py but not carried: {sorted(reached - carried)}"


def test_wheelhouse_recipe() -> None:
    wheelhouse = bench_module("gpu_wheelhouse")
    reqs = wheelhouse.requirements()
    assert [r.split("==")[0] for r in reqs] == [p.dist for p in wheelhouse.PACKAGES]
    assert all("==" in r for r in reqs)  # pinned to what the tests here ran with
    command = wheelhouse.download_command(Path("/x"), reqs)
    assert command[1:4] == ["-m", "pip", "download"]
    for flag in ("--only-binary=:all:", "--no-deps"):
        assert flag in command
    assert command[command.index("--python-version") + 1] == "3.12"
    assert command[command.index("--implementation") + 1] == "cp"
    assert "manylinux2014_x86_64" in command and command[-len(reqs):] == reqs
    carried = {str(p.relative_to(ROOT)) for p in wheelhouse.carried_files(ROOT)}
    assert "bench/gpu.py" in carried and "bench/gpu_parts/run.py" in carried and "slic/pretrain.py" in carried
    assert not any(p.startswith((".venv/", ".gpu-wheelhouse/", "data/")) for p in carried)


def test_size_check(tmp_path: Path) -> None:
    wheelhouse = bench_module("gpu_wheelhouse")
    small, big = tmp_path / "small.whl", tmp_path / "big.whl"
    small.write_bytes(b"x" * 1000)
    big.write_bytes(b"x" * 300_000)
    report = wheelhouse.check_size({"working_tree": [small], "wheelhouse": [big]}, limit_mib=1)
    assert report["total_bytes"] == 301_000 and report["bytes"] == {"working_tree": 1000, "wheelhouse": 300_000}
    with pytest.raises(wheelhouse.WheelhouseTooLarge, match=r"0\.3 MiB .* exceeds 0\.25 MiB; largest: big\.whl"):
        wheelhouse.check_size({"working_tree": [small], "wheelhouse": [big]}, limit_mib=0.25)
    parts = wheelhouse.size_parts(tmp_path / "absent")
    assert parts["wheelhouse"] == [] and parts["working_tree"]


def test_install_unpacks_only_missing_modules(tmp_path: Path) -> None:
    wheelhouse = bench_module("gpu_wheelhouse")
    source = tmp_path / "wheels"
    source.mkdir()
    for name, module in (("zzslicfake-1.0-py3-none-any.whl", "zzslicfake"), ("numpy-9.9-py3-none-any.whl", "numpy")):
        with zipfile.ZipFile(source / name, "w") as archive:
            archive.writestr(f"{module}/__init__.py", "VALUE = 42\n")
    assert wheelhouse.install(source, tmp_path / "site") == ["zzslicfake-1.0-py3-none-any.whl"]
    assert (tmp_path / "site" / "zzslicfake" / "__init__.py").is_file()
    assert not (tmp_path / "site" / "numpy").exists()  # importable here: the machine's own is used


def test_peak_table_and_sanitise() -> None:
    gpu = bench_module("gpu")
    assert gpu.peak_bf16_tflops("NVIDIA H200") == 989.0
    assert gpu.peak_bf16_tflops("NVIDIA GH200 480GB") == 989.0
    assert gpu.peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu.peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu.peak_bf16_tflops("Some GPU") is None and gpu.peak_bf16_tflops(None) is None
    clean = gpu.sanitise({"/tmp/w/x": ["/tmp/w/smoke/a.pt", f"{ROOT}/bench/gpu.py", "File \"/usr/lib/x.py\", line 3",
                                       "/usr/lib/python3/dist-packages/torch/nn/conv.py", "clips/s", "https://a/b",
                                       float("nan")]}, {"/tmp/w": "<work>", str(ROOT): "."})
    assert clean == {"<work>/x": ["<work>/smoke/a.pt", "./bench/gpu.py", "File \"<path:x.py>\", line 3",
                                  "<site>/torch/nn/conv.py", "clips/s", "https://a/b", None]}


def test_budget_cuts_a_section_short_and_skips_the_rest(tmp_path: Path) -> None:
    gpu = bench_module("gpu")
    bench = gpu.Bench(tmp_path / "gpu.json", 1.0, gpu.QUICK, gpu.torch.device("cpu"), tmp_path, None)

    def slow(_: object, out: dict) -> None:
        out["started"] = True
        time.sleep(10)

    started = time.perf_counter()
    bench.section("slow", slow, needs_s=0)
    bench.section("next", lambda _, out: out.update(ran=True), needs_s=5)
    assert time.perf_counter() - started < 5
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["slow"]["status"] == "error" and "time budget" in report["slow"]["error"]
    assert report["slow"]["started"]
    assert report["next"]["status"] == "skipped" and "ran" not in report["next"]

    def broken(_: object, out: dict) -> None:
        raise RuntimeError("boom")

    bench.budget = 100.0
    bench.section("broken", broken)
    bench.section("after", lambda _, out: out.update(ran=True))
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["broken"]["status"] == "error" and report["broken"]["error"] == "RuntimeError: boom"
    assert report["after"] == {"status": "ok", "ran": True, "seconds": report["after"]["seconds"]}


def test_a_mode_the_budget_cuts_short_keeps_the_epochs_it_trained(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """learning_at_scale on a budget that ends while a mode trains: the row says so and keeps each epoch's
    val recall and cluster AMI logged so far (the modes before it are complete)."""
    gpu = bench_module("gpu")
    import slic.pretrain
    from bench.gpu_parts.scale import learning_at_scale

    real = slic.pretrain.pretrain

    def slow_after_one_epoch(cfg: object, **kwargs: object) -> dict:
        if cfg.mode == "random_init":  # type: ignore[attr-defined]
            return real(cfg, **kwargs)
        run = kwargs["run"]
        run.start(resume_run_id=None, digest="")  # type: ignore[attr-defined]
        run.log_metrics({"loss": 1.0, "val_recall_at_1": 0.5, "cluster_ami": 0.25}, step=8)  # type: ignore[attr-defined]
        time.sleep(30)
        return {}

    monkeypatch.setattr(slic.pretrain, "pretrain", slow_after_one_epoch)
    bench = gpu.Bench(tmp_path / "gpu.json", 4.0, gpu.QUICK, gpu.torch.device("cpu"), tmp_path, None)
    bench.section("learning_at_scale", learning_at_scale, needs_s=0)
    report = json.loads((tmp_path / "gpu.json").read_text())["learning_at_scale"]
    assert report["status"] == "error" and "time budget" in report["error"]
    assert report["rows"]["random_init"]["status"] == "ok"
    cut = report["rows"]["intra_video"]
    assert (cut["status"], cut["epochs_done"], cut["val_recall_at_1"], cut["cluster_ami"]) == (
        "budget", 1, [[8, 50.0]], [0.25])


def test_merge_keeps_each_section_from_the_call_that_finished_it() -> None:
    """A second call that ran only the skipped sections fills them; a failed later section never hides a result."""
    gpu = bench_module("gpu")
    first = {"device": "cuda", "gpu_name": "H", "started_at": "t1", "budget_s": 420.0, "total_s": 400.0,
             "setup": {"status": "ok", "videos": 64},
             "clustering": {"status": "ok", "finch_s": 1.0},
             "search": {"status": "skipped", "reason": "time budget"}}
    second = {"device": "cuda", "gpu_name": "H", "started_at": "t2", "budget_s": 280.0, "total_s": 160.0,
              "setup": {"status": "ok", "videos": 65},
              "clustering": {"status": "error", "error": "boom"},
              "search": {"status": "ok", "qps": 5.0}}
    merged = gpu.merge_reports([first, second])
    assert merged["clustering"] == {"status": "ok", "finch_s": 1.0}
    assert merged["search"] == {"status": "ok", "qps": 5.0}
    assert merged["setup"]["videos"] == 64
    assert [c["sections"] for c in merged["calls"]] == [["clustering"], ["search"]]
    assert merged["status"] == {"setup": "ok", "clustering": "ok", "search": "ok"}
    assert merged["total_s"] == 560.0
    with pytest.raises(ValueError, match="different devices"):
        gpu.merge_reports([first, {**second, "gpu_name": "other"}])


def test_gpu_run_script_unpacks_missing_wheels_and_writes_into_out(tmp_path: Path) -> None:
    """bench/gpu_run.sh as the GPU visit runs it: wheels onto PYTHONPATH (no venv), the report and logs into $OUT."""
    wheels, out = tmp_path / "wheels", tmp_path / "out"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "zzslicfake-1.0-py3-none-any.whl", "w") as archive:
        archive.writestr("zzslicfake/__init__.py", "VALUE = 42\n")
    (wheels / "requirements.txt").write_text("zzslicfake==1.0\n")
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_WHEELHOUSE": str(wheels),
           "GPU_SITE": str(tmp_path / "site")}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_run.sh"), "--quick", "--sections", "--work",
                           str(tmp_path / "work")], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "zzslicfake-1.0-py3-none-any.whl" in (out / "gpu_install.log").read_text()
    assert (tmp_path / "site" / "zzslicfake" / "__init__.py").is_file()
    report = json.loads((out / "gpu.json").read_text())
    assert report["status"] == {"setup": "ok"}
    assert "setup: ok" in (out / "gpu.log").read_text()
