# The two commands a fresh clone needs: `make demo` and `make test`.
# Everything else depends on `install`, which is idempotent (a stamp file records it).

SHELL := bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
# pip warns once per package about the machine's extra local indexes; that noise hides real errors.
QUIET_PIP := 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
BUNDLE ?= bundles/brats_mri_segmentation
# torch first: pip finds the local CPU wheel here and the CUDA build on a GPU machine;
# installing the package first would let a dependency resolve torch to the newest CUDA build.
TORCH_PIN := torch==2.13.0

.PHONY: install demo test test-slow lint bench train train-ddp finetune mlflow-ui clean browser

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_PIN) $(QUIET_PIP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' $(QUIET_PIP)
# nnU-Net v2 (tests of `tumorseg export-nnunet`) without its dependencies: they require
# torchvision, whose resolution would replace the pinned torch; the ones it needs to plan
# and preprocess are listed after it, installed with torch held at $(TORCH_PIN).
	$(PY) -m pip install -q --disable-pip-version-check --no-deps nnunetv2==2.8.1 acvl-utils==0.2.6 dynamic-network-architectures==0.4.4 batchgeneratorsv2==0.3.6 batchgenerators==0.25.5 $(QUIET_PIP)
	echo '$(TORCH_PIN)' > $(VENV)/torch-constraint.txt
	$(PY) -m pip install -q --disable-pip-version-check -c $(VENV)/torch-constraint.txt connected-components-3d blosc2 yacs imagecodecs seaborn graphviz einops unittest2 linecache2 traceback2 future SimpleITK scikit-learn $(QUIET_PIP)
	@touch $(STAMP)

demo: install
	$(VENV)/bin/tumorseg demo --workdir demo

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

# Tests run in TEST_WORKERS processes (pytest-xdist; `auto`: one per core); TEST_WORKERS=0 runs them
# in this process, as a debugger wants.
TEST_WORKERS ?= auto
test: install lint browser
	$(VENV)/bin/pytest -m "not slow" -q -n $(TEST_WORKERS)

# The viewer's end-to-end test drives Debian's Chromium through chromedriver (Selenium, with no
# driver or browser download); installed here once as root, otherwise that one test is skipped.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq chromium chromium-driver; \
	  else \
	    echo "warning: the viewer's browser test will be skipped without Chromium;" \
	      "install it with: sudo apt-get install -y chromium chromium-driver"; \
	  fi; \
	fi

test-slow: install
	$(VENV)/bin/pytest -m slow -q -n $(TEST_WORKERS)

# Real-data benchmarks take the data folder: make bench BENCH=lgg_real DATA=/data/kaggle_3m
# [TRAIN=1 [SEEDS=0,1]] [LGG_NETWORK=transunet] [LGG_CHECKPOINT=path] [WORK=dir]
# (benchmarks/bench_lgg_real.py; SEEDS packs one model per seed into an ensemble);
# SWEEP=0.3,0.5 [FOLD=0] with LGG_CHECKPOINT=<fold model> chooses the threshold on a dev fold.
bench: install
	DATA="$(DATA)" TRAIN="$(TRAIN)" SEEDS="$(SEEDS)" LGG_NETWORK="$(LGG_NETWORK)" \
	  LGG_CHECKPOINT="$(LGG_CHECKPOINT)" WORK="$(WORK)" SWEEP="$(SWEEP)" FOLD="$(FOLD)" \
	  $(PY) benchmarks/run.py $(BENCH)

# Through tumorseg.bundle_run (MONAI's bundle CLI, same arguments): a failure inside the config is
# reported in at most three lines (TUMORSEG_DEBUG=1 for the traceback).
train: install
	$(PY) -m tumorseg.bundle_run run training \
	  --meta_file $(BUNDLE)/configs/metadata.json \
	  --config_file $(BUNDLE)/configs/train.json \
	  --logging_file $(BUNDLE)/configs/logging.conf \
	  --bundle_root $(BUNDLE) $(ARGS)

# The same training on NPROC processes of this machine (one per GPU; Gloo on CPU), via torchrun.
# Several nodes: run `tumorseg launch` itself with --nnodes/--rdzv-endpoint (README).
NPROC ?= 2
train-ddp: install
	$(VENV)/bin/tumorseg launch --nproc-per-node $(NPROC) --bundle $(BUNDLE) -- $(ARGS)

# Fine-tune from local pretrained weights: make finetune PRETRAINED=path DATASET=dir-or-manifest
# [NETWORK=resenc_unet] [ARGS="--freeze_encoder_epochs 5 --encoder_lr_scale 0.1"]. A DATASET that is
# a .json file is a manifest (its dataset_dir is used); anything else a data folder. A checkpoint
# tumorseg wrote describes itself: its network (NETWORK defaults to it), filters, pixdim and
# roi_size are used unless ARGS sets them (a contradicting value is refused): the command is
# built by tumorseg.training.finetune_args, printed, then run.
NETWORK ?=
finetune: install
	@test -n "$(PRETRAINED)" || { echo "make finetune needs PRETRAINED=path/to/checkpoint"; exit 2; }
	@cmd=$$($(PY) -m tumorseg.training.finetune_args --bundle "$(BUNDLE)" --pretrained "$(PRETRAINED)" \
	  --network "$(NETWORK)" --dataset "$(DATASET)" -- $(ARGS)) && echo "$$cmd" && eval "$$cmd"

# The UI over the local store that training writes when run from here (mlflow.db, artifacts in
# mlartifacts/). The GenAI job runner is switched off: seven idle processes, unused here.
mlflow-ui: install
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow server --host 127.0.0.1 \
	  --port $${PORT:-5000} --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
	  --default-artifact-root $(CURDIR)/mlartifacts

clean:
	rm -rf demo .pytest_cache .mypy_cache .ruff_cache test-artifacts
