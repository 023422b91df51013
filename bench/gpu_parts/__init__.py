"""The sections of bench/gpu.py (the script and its docstring say what each measures), one module each.

* run: Profile (full / quick sizes), Bench (the report, its file, the time budget), sanitise, environment;
* shards: the synthetic frame-shard datasets the setup writes, the paper preset as a Config;
* throughput: a, pretraining throughput (model alone, end to end, MFU; compile off and on);
* data_path: b, the GPU data path against CPU loader workers;
* clustering_search: c, FINCH and k-means on the device; d, exact search;
* tvl1: e, TV-L1 on the device against OpenCV and the CPU;
* smoke: f, every GPU stage once on a small dataset.

bench/gpu.py runs them; tests/test_bench_gpu.py checks the imports of all of them (bench/gpu_wheelhouse.py
third_party_imports follows bench.* imports as it follows slic.* ones).
"""
