# Two commands on a fresh machine: `make run` (the whole pipeline on the synthetic dataset)
# and `make test`. Both create .venv and install the project first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
EXTRAS ?= cpu,dev

export PATH := $(BIN):$(PATH)
export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install chromium run run-real test bench bench-real bench-label-free bench-aspect-ratio bench-unknown-classes bench-archive-clusters bench-spread-labels bench-retrain-labels bench-labels-stage bench-promote-labels bench-protocol-gallery bench-search-service bench-added-videos bench-serving-decode bench-damaged-packets bench-segments bench-frame-rate bench-gpu gpu-wheelhouse clean pipeline image services-up services-down deploy worker preset-paper

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/dvc repro
	$(BIN)/slic summary

# Real video: six UCF101 classes (../shared/real/ucf101_6, split 1, used in place; presets/ucf101_6_cpu.yaml
# written into params.yaml), then the pipeline. `git checkout params.yaml` returns to the synthetic default.
REAL := ../shared/real/ucf101_6

run-real: install
	@test -d $(REAL)/videos || { echo "run-real: $(REAL)/videos not found: the six-class UCF101 set lies beside the checkout"; exit 2; }
	$(BIN)/slic preset ucf101_6_cpu
	$(BIN)/dvc repro
	$(BIN)/slic summary

# The four modes x seeds 7, 8, 9 on the real set, with the linear probe and finetuning (reports/bench/real.json).
bench-real: install
	$(BIN)/python bench/real.py

# Whether the numbers evaluate reports on unlabelled videos rank encoders as recall does (reports/bench/label_free.json);
# reuses bench-real's stored encoders of the four modes and slic_video, trains the missing ones.
bench-label-free: install
	$(BIN)/python bench/label_free.py

# Which resize embeds videos that are not 4:3 best: the IIC box, the short side or letterbox, on ucf101_6 cut to 9:16
# and 16:9 (reports/bench/aspect_ratio.json); reuses bench-real's stored encoders, trains the missing ones.
bench-aspect-ratio: install
	$(BIN)/python bench/aspect_ratio.py

# Whether naming's similarity tells a video of none of your classes (reports/bench/unknown_classes.json); reuses
# bench-real's stored encoders, trains the missing ones.
bench-unknown-classes: install
	$(BIN)/python bench/unknown_classes.py

# The clusters stage's groups against the classes, every mode's encoder x seeds (ucf101_6; bench/real.py's cells).
bench-archive-clusters: install
	$(BIN)/python bench/archive_clusters.py

# A simulated user labelling ucf101_6 20 videos a round with spread_labels' suggestions (bench/real.py's cells).
bench-spread-labels: install
	$(BIN)/python bench/spread_labels.py

# Whether retraining the encoder on 100 labels (given, or spread to the train videos) pays (ucf101_6, 5 seeds;
# reuses bench-real's stored cells, trains the missing ones).
bench-retrain-labels: install
	$(BIN)/python bench/retrain_labels.py --seeds 7 8 9 10 11

# pretrain.mode labels through the stages as a user runs them: slic, 100 labels, retrained (reports/bench/labels_stage.json).
bench-labels-stage: install
	$(BIN)/python bench/labels_stage.py

# Whether promote's comparison on your labels serves the encoder better on test (reads bench-labels-stage's pairs).
bench-promote-labels: install
	$(BIN)/python bench/promote_labels.py

# recall against the carved train split and against the whole train list (the IIC protocol's gallery)
bench-protocol-gallery: install
	$(BIN)/python bench/protocol_gallery.py

# One search by `slic serve` against `slic search` in a fresh process, 12 ucf101_6 queries on this checkout's index
# (after `make run`; reports/bench/search_service.json).
bench-search-service: install
	$(BIN)/python bench/search_service.py

# Videos added to the index without retraining against the same videos embedded by the embed stage (ucf101_6).
bench-added-videos: install
	$(BIN)/python bench/added_videos.py

# Decoding packet by packet (damaged packets passed over) against PyAV's loop, which stops at the first: time and frames.
bench-damaged-packets: install
	$(BIN)/python bench/damaged_packets.py

# Serving's decode (search, embed-video, added videos): four ways side by side; needs `make run`'s best.pt.
bench-serving-decode: install
	$(BIN)/python bench/serving_decode.py

# Is the frame rate a shortcut on ucf101_6, and what extract.fps changes (reports/bench/frame_rate.json): bench-real's
# native cells against the same rows trained at 25 fps (data/bench/real_fps25); needs `make run` for its synthetic part.
bench-frame-rate: install
	$(BIN)/python bench/real.py --no-classify --no-mlflow --rows random_init intra_video slic slic_video oracle \
		--set extract.fps=25 --work data/bench/real_fps25 --out reports/bench/real_fps25.json
	$(BIN)/python bench/frame_rate.py --resampled data/bench/real_fps25

# Long videos as segments: ucf101_6's train clips back to back, searched with its test clips (reports/bench/segments.json).
bench-segments: install
	$(BIN)/python bench/segments.py

# The paper's UCF101 values (presets/paper_ucf101.yaml) written into params.yaml; then set manifest.root.
preset-paper: install
	$(BIN)/slic preset paper_ucf101

# Debian's headless Chromium for tests/test_report.py (installed once; CI runs as root on Debian 12).
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

chromium:
	@test -x $(CHROMIUM) || { echo "installing Debian's chromium for tests/test_report.py"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq chromium fonts-liberation >/dev/null; }

test: install chromium
	$(BIN)/pytest

bench: install
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/flow.py
	$(BIN)/python bench/clustering.py
	$(BIN)/python bench/pretrain.py
	$(BIN)/python bench/search.py
	$(BIN)/python bench/neighbours.py
	$(BIN)/python bench/ablation.py --work data/bench/ablation

# GPU bench (bench/gpu.py -> reports/bench/gpu.json): the full run on CUDA, a quick CPU version without it.
# On the lent GPU machine run `bash bench/gpu_run.sh` instead (carry .gpu-wheelhouse/, made by gpu-wheelhouse).
bench-gpu: install
	$(BIN)/python bench/gpu.py

# The wheels bench/gpu.py needs beyond torch/torchvision (CPython 3.12 manylinux) and its TV-L1 reference data,
# into the ignored .gpu-wheelhouse/; fails when it and the working tree exceed 60 MiB.
gpu-wheelhouse: install
	$(BIN)/python bench/gpu_wheelhouse.py build

clean:
	rm -rf data/raw data/manifests data/frames data/flow data/validation data/models data/embeddings data/index

# Prefect and the shared services (README "Prefect flows, deployments and shared services").
COMPOSE := docker compose --env-file infra/.env -f infra/compose.yaml

pipeline: install
	$(BIN)/slic pipeline

image:
	docker build -f infra/Dockerfile -t slic:latest .

infra/.env:
	cp infra/.env.example $@
	@echo "created infra/.env from infra/.env.example: change its passwords"

services-up: infra/.env
	$(COMPOSE) up -d --build --wait

services-down:
	$(COMPOSE) down

deploy: install
	$(BIN)/prefect work-pool create slic-process --type process --overwrite
	SLIC_CHECKOUT=$(CURDIR) $(BIN)/prefect --no-prompt deploy --all

worker: install
	$(BIN)/prefect worker start --pool slic-process
