# LSQ reproducibility report: `make help` lists every target and variable.
SHELL := bash
.DEFAULT_GOAL := help
# No .DELETE_ON_ERROR: every recipe writes its target last and atomically (lsq train's
# summary.json, setup's stamp), so a failed recipe leaves no half-written target to delete, and a
# recipe that failed without writing its target (a run "being trained by another process") must
# not delete the summary another make just finished. .PRECIOUS on the summaries, below, also
# keeps them when a make is interrupted.
.SUFFIXES:
# Runs are independent: one that fails (missing data, NaN loss) must not stop the others, and
# `make cifar10 imagenet report` still renders the report from what exists. The exit status
# stays non-zero when anything failed.
MAKEFLAGS += --keep-going

PYTHON_BOOT ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed

RUNS     ?= runs
SEEDS    ?= 0
DEVICE   ?= auto
DATA_DIR ?=
PROFILE  ?=
ABLATION_SEEDS ?= 0 1
TRAIN_ARGS ?=
# Put before every training command: a cluster's launcher, e.g. "srun --ntasks=1 --gres=gpu:1 --exclusive".
LAUNCH ?=
REPORT_ARGS ?=
# Trainings at once in `make smoke`.
JOBS ?= $(shell nproc)
# Start rows 1-4 beside row 0 (make -j), warming their compiles while it trains: on for CUDA.
WARM ?= $(if $(filter cuda%,$(DEVICE)),1)

# PROFILE wins when set; otherwise each table has its own default.
profile_of = $(if $(PROFILE),$(PROFILE),$(or $($(1)_PROFILE),smoke))
cifar10_PROFILE       := paper
imagenet_PROFILE      := paper
fashion-mnist_PROFILE := quick
synthetic_PROFILE     := smoke
# The paper's tables train from the seed tables' float models, so they share their profiles.
imagenet-paper_PROFILE      := paper
fashion-mnist-paper_PROFILE := quick

# make -jN runs N trainings at once: each takes 1/N of the CPU cores (lsq.engine.host.share_cpu_threads).
TRAIN = LSQ_PARALLEL_RUNS=$(patsubst -j%,%,$(filter -j%,$(MAKEFLAGS))) \
        $(LAUNCH) $(PY) -m lsq train --device $(DEVICE) --runs-dir $(RUNS) --no-progress \
        $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(TRAIN_ARGS)

##@ Setup
.PHONY: help setup
help: ## list targets and variables
	@echo "LSQ reproducibility report (arXiv 1902.08153)"
	@echo
	@awk 'BEGIN {FS = ":.*## "} /^##@/ {printf "\n%s\n", substr($$0, 5)} \
	     /^[a-zA-Z0-9_-]+:.*## / {printf "  make %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "Variables (make VAR=value ...):"
	@echo "  PROFILE         paper | full | quick | smoke (default: paper for cifar10/imagenet, quick for fashion-mnist, smoke for synthetic;"
	@echo "                  full: all of Fashion-MNIST, 20 float + 8 quantized epochs)"
	@echo "  SEEDS           seeds to train, space-separated (default: $(SEEDS))"
	@echo "  DEVICE          auto | cpu | cuda | cuda:N (default: $(DEVICE)); on CUDA, torch.compile and CUDA graphs are on"
	@echo "                  by default (--no-compile / --no-cuda-graphs in TRAIN_ARGS); make -j5 trains rows 1-4 together"
	@echo "  JOBS            trainings at once in 'make smoke' (default: the core count, $(JOBS)); with make -jN"
	@echo "                  each training takes 1/N of the cores (LSQ_PARALLEL_RUNS)"
	@echo "  WARM            1: start a table's rows 1-4 beside row 0 (make -j5): they compile while it trains, then"
	@echo "                  wait for it (lsq train --wait-for-baseline); empty: after it (default: 1 when DEVICE is cuda*)"
	@echo "  DATA_DIR        dataset directory (default: data/<dataset>; Fashion-MNIST also /usr/share/datasets/fashion-mnist)"
	@echo "  RUNS            run directory root (default: $(RUNS))"
	@echo "  ABLATION_SEEDS  seeds of the ablation runs (default: $(ABLATION_SEEDS))"
	@echo "  TRAIN_ARGS      extra arguments for every 'python -m lsq train' (e.g. --amp --channels-last, --weights FILE)"
	@echo "  LAUNCH          put before every training command, e.g. LAUNCH=\"srun --ntasks=1 --gres=gpu:1 --exclusive\""
	@echo "                  with make -j16: each row a Slurm job step (docs/parallel-runs.md)"
	@echo "  REPORT_ARGS     extra arguments for 'python -m lsq report' (e.g. --no-notebooks)"
	@echo "  SETUP_MIN_FREE_GIB  free disk make setup asks for before installing torch (default: $(SETUP_MIN_FREE_GIB))"

# torch's x86_64 wheel carries its CUDA libraries: the environment takes about 6 GiB. Say so
# before pip fails half-way with "No space left on device" (a torch already installed needs none).
SETUP_MIN_FREE_GIB ?= 7

$(STAMP): pyproject.toml
	@[ -d "$$(echo $(VENV)/lib/python3*/site-packages/torch)" ] || $(PYTHON_BOOT) -c \
	  'import shutil, sys; free = shutil.disk_usage(".").free / 2**30; need = float(sys.argv[1]); \
	   sys.exit(None if free >= need else f"make setup: only {free:.1f} GiB free on this disk; the environment " \
	   f"(torch with its CUDA libraries) needs about {need:g} GiB. Free some space (old clones, " \
	   f"/tmp/torchinductor_*), then run make setup again.")' $(SETUP_MIN_FREE_GIB)
	$(PYTHON_BOOT) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

setup: $(STAMP) ## create .venv/ and install the project (torch, torchvision, pandas, ...)

##@ Training (file targets on each run's summary.json: finished runs never rerun, interrupted ones resume)
# $(1) dataset, $(2) profile, $(3) seed, $(4) row. The float baseline is an order-only
# prerequisite (unless WARM, below): a run is done when its summary.json exists (lsq train
# decides), whatever the files' times say after a checkout.
define RUN_RULE
$(RUNS)/$(1)/$(2)/row$(4)/seed$(3)/summary.json: | $(STAMP) check-$(1) $(if $(call early,$(1),$(4)),,$(if $(filter-out 0,$(4)),$(RUNS)/$(call baseline_of,$(1))/$(2)/row0/seed$(3)/summary.json))
	$$(TRAIN) --dataset $(1) --profile $(2) --seed $(3) --row $(4) $(if $(call early,$(1),$(4)),--wait-for-baseline)
SUMMARIES += $(RUNS)/$(1)/$(2)/row$(4)/seed$(3)/summary.json
endef
# With WARM, a quantized row starts beside its float baseline instead of after it: it warms its
# compile and waits for row 0's summary.json inside the process (lsq train --wait-for-baseline),
# at a lower CPU priority meanwhile, so that row 0, which the table waits for, keeps the CPU.
# Only where this make builds row 0 too (the dataset's table, or the ablations, which need it):
# a single row's summary.json as the goal builds its baseline first, as without WARM.
# $(1) dataset, $(2) row
early = $(and $(WARM),$(filter-out 0,$(2)),$(filter $(1) ablations,$(MAKECMDGOALS)))
# $(1) dataset, $(2) profile, $(3) seed, $(4) row, $(5) ablation. An ablation that diverges is
# one of its results (diverged.json, shown by the report), so it does not fail the make.
define ABLATION_RULE
$(RUNS)/$(1)/$(2)/row$(4)-$(5)/seed$(3)/summary.json: | $(STAMP) check-$(1) $(RUNS)/$(call baseline_of,$(1))/$(2)/row0/seed$(3)/summary.json $(RUNS)/$(1)/$(2)/row$(4)/seed$(3)/summary.json
	$$(TRAIN) --dataset $(1) --profile $(2) --seed $(3) --row $(4) --ablation $(5) --diverged-ok
SUMMARIES += $(RUNS)/$(1)/$(2)/row$(4)-$(5)/seed$(3)/summary.json
endef

# The lists live in lsq/experiments.py alone; `python -m lsq list` needs only the standard library,
# so these work before .venv/ exists.
ROOT      := $(dir $(abspath $(lastword $(MAKEFILE_LIST))))
lsq_list  = $(shell PYTHONPATH="$(ROOT)" $(PYTHON_BOOT) -m lsq list $(1) 2>/dev/null)
# One word per table, "name:baseline table:rows,...:ablations,..." (lsq list tables).
TABLE_SPECS := $(call lsq_list,tables)
comma     := ,
spec_of   = $(subst :, ,$(filter $(1):%,$(TABLE_SPECS)))
DATASETS  := $(foreach t,$(TABLE_SPECS),$(firstword $(subst :, ,$(t))))
baseline_of = $(word 2,$(call spec_of,$(1)))
rows_of   = $(subst $(comma), ,$(word 3,$(call spec_of,$(1))))
# "row1-distill" -> row and ablation name
table_ablations_of = $(subst $(comma), ,$(word 4,$(call spec_of,$(1))))
ablation_row  = $(patsubst row%,%,$(firstword $(subst -, ,$(1))))
ablation_name = $(patsubst row$(call ablation_row,$(1))-%,%,$(1))
ROWS      := $(call rows_of,fashion-mnist)
ABLATIONS := $(call lsq_list,ablations)
ABLATION_ROWS := $(call lsq_list,ablation-rows --profile $(call profile_of,fashion-mnist))
CONTROLS  := $(call lsq_list,controls --profile $(call profile_of,fashion-mnist))
# Without the lists no run has a rule: say so for the goals that train, rather than do nothing.
ifneq ($(filter cifar10 imagenet fashion-mnist imagenet-paper fashion-mnist-paper synthetic ablations smoke reproduce reproduce-full,$(MAKECMDGOALS)),)
ifeq ($(strip $(DATASETS)),)
$(error `$(PYTHON_BOOT) -m lsq list datasets` printed nothing; make needs Python 3.11+ as PYTHON_BOOT and lsq/ beside this Makefile)
endif
endif
table_targets = $(foreach s,$(SEEDS),$(foreach r,$(call rows_of,$(1)),$(RUNS)/$(1)/$(call profile_of,$(1))/row$(r)/seed$(s)/summary.json) \
  $(foreach a,$(call table_ablations_of,$(1)),$(RUNS)/$(1)/$(call profile_of,$(1))/$(a)/seed$(s)/summary.json))

$(foreach d,$(DATASETS),$(foreach s,$(sort $(SEEDS) $(ABLATION_SEEDS)),$(foreach r,$(call rows_of,$(d)),\
  $(eval $(call RUN_RULE,$(d),$(call profile_of,$(d)),$(s),$(r))))))
$(foreach d,$(DATASETS),$(foreach s,$(SEEDS),$(foreach a,$(call table_ablations_of,$(d)),\
  $(eval $(call ABLATION_RULE,$(d),$(call profile_of,$(d)),$(s),$(call ablation_row,$(a)),$(call ablation_name,$(a)))))))
$(foreach s,$(ABLATION_SEEDS),$(foreach r,$(ABLATION_ROWS),$(foreach a,$(ABLATIONS),\
  $(eval $(call ABLATION_RULE,fashion-mnist,$(call profile_of,fashion-mnist),$(s),$(r),$(a))))))
$(foreach s,$(ABLATION_SEEDS),$(foreach a,$(CONTROLS),\
  $(eval $(call ABLATION_RULE,fashion-mnist,$(call profile_of,fashion-mnist),$(s),0,$(a)))))
# make deletes a target whose mtime changed when it is interrupted (Ctrl-C, kill) mid-recipe; a
# summary.json that another make (or lsq train) finished meanwhile is a finished run: keep it.
# (A pattern in .PRECIOUS covers only implicit rules, hence the list.)
.PRECIOUS: $(SUMMARIES)

.PHONY: cifar10 imagenet fashion-mnist imagenet-paper fashion-mnist-paper synthetic ablations $(addprefix check-,$(DATASETS))
cifar10: $(call table_targets,cifar10) ## CIFAR-10 ResNet-20 table: rows 0-4 x SEEDS (needs data/cifar10)
imagenet: $(call table_targets,imagenet) ## ImageNet ResNet-18 table: rows 0-4 x SEEDS (needs data/imagenet, --weights)
fashion-mnist: $(call table_targets,fashion-mnist) ## Fashion-MNIST ResNet-20 table (real data, offline)
imagenet-paper: $(call table_targets,imagenet-paper) ## the LSQ paper's ImageNet table: w/a 2/2, 3/3, 4/4, 8/8, first/last 8-bit, 2/2 and 3/3 distilled (from imagenet's row 0)
fashion-mnist-paper: $(call table_targets,fashion-mnist-paper) ## the paper's precisions on Fashion-MNIST, 2/2 distilled (from fashion-mnist's row 0; use PROFILE=full)
synthetic: $(call table_targets,synthetic) ## synthetic CIFAR-shaped data table (smoke/timing only)
ablations: $(foreach s,$(ABLATION_SEEDS),$(foreach r,$(ABLATION_ROWS),$(foreach a,$(ABLATIONS),$(RUNS)/fashion-mnist/$(call profile_of,fashion-mnist)/row$(r)-$(a)/seed$(s)/summary.json)) $(foreach a,$(CONTROLS),$(RUNS)/fashion-mnist/$(call profile_of,fashion-mnist)/row0-$(a)/seed$(s)/summary.json)) ## Fashion-MNIST ablations: step-size init, step-size lr, lr schedule (rows 1, 3; row 3 with PROFILE=full, with row 0's float control)

# Fails at once, with where the data is expected and how to get it, before any run starts.
$(addprefix check-,$(filter-out synthetic,$(DATASETS))): check-%: | $(STAMP)
	@$(PY) -m lsq check-data --dataset $* $(if $(DATA_DIR),--data-dir $(DATA_DIR)) \
	  $(if $(findstring --download,$(TRAIN_ARGS)),--download)
# Generated on the fly: nothing to check, and no Python start-up for the table to wait on.
check-synthetic: ;

##@ Report
.PHONY: report smoke
report: | $(STAMP) ## render report/*.md and report/site/ (with the executed notebooks) from whatever runs exist
	$(PY) -m lsq report --runs-dir $(RUNS) --out report $(REPORT_ARGS)

smoke: ## whole pipeline on synthetic data, smoke profile, 2 seeds, to report/site/ (about a minute on a CPU)
	$(MAKE) -j$(JOBS) synthetic PROFILE=smoke SEEDS="0 1" DEVICE=$(DEVICE) RUNS=$(RUNS)
	$(MAKE) report RUNS=$(RUNS)
	@echo "open report/site/index.html"

##@ Checks
.PHONY: test bench clean reproduce reproduce-full
# Seeds of the committed Fashion-MNIST table that `make reproduce(-full)` retrains (all: "0 1 2").
REPRODUCE_SEEDS ?= 0
# $(1) profile, $(2) lsq train flags. Retrains REPRODUCE_SEEDS of the committed fashion-mnist/$(1)
# table in a temp dir as it was made (their summary.json's device): on the CPU, one thread per
# run whatever make -j, so that the same kind of CPU reproduces it bit for bit; then lsq
# compare-runs classes each run identical, within seed noise or differs. The reference runs are
# checked first: a missing one would otherwise show only after hours of training. `+`: make -n
# runs the recursive make (it prints the trainings), which it cannot see inside $(call).
define REPRODUCE
@ref=$(RUNS)/fashion-mnist/$(1); missing=$$(for f in $(foreach s,$(REPRODUCE_SEEDS),$(foreach r,$(ROWS),$$ref/row$(r)/seed$(s)/summary.json)); \
  do [ -e "$$f" ] || echo "$$f"; done); \
[ -z "$$missing" ] || { echo "error: no finished reference run to compare with:" $$missing "- train them first" \
  "(make -j2 fashion-mnist PROFILE=$(1) SEEDS=\"$(REPRODUCE_SEEDS)\") or set REPRODUCE_SEEDS to seeds that $$ref has" >&2; exit 2; }; \
dir=$$(mktemp -d "$${TMPDIR:-/tmp}/lsq-reproduce.XXXXXX") && echo "retraining into $$dir" && \
OMP_NUM_THREADS=1 $(MAKE) --no-print-directory -j$(JOBS) fashion-mnist SEEDS="$(REPRODUCE_SEEDS)" \
  PROFILE=$(1) RUNS="$$dir" DEVICE=cpu DATA_DIR="$(DATA_DIR)" TRAIN_ARGS=$(2) WARM= && \
$(PY) -m lsq compare-runs "$$ref" "$$dir/fashion-mnist/$(1)" --json "$$ref/reproduction.json"; \
rc=$$?; echo "retrained runs: $$dir"; exit $$rc
endef
# The quick table was made eager (a short CPU run does not compile).
reproduce: | $(STAMP) ## retrain the committed Fashion-MNIST table (seed 0) in a temp dir, compare with runs/ (the report shows it)
	+$(call REPRODUCE,quick,--no-compile)
# The full table compiled (auto, a long CPU run); --compile says so rather than quietly
# training eager where no C++ compiler is found.
reproduce-full: | $(STAMP) ## the same for the full table (runs/fashion-mnist/full): long, about 2.5 h on a 2-core CPU (20 + 4x8 epochs, ~2 min each, 1 thread per run, 2 runs at once)
	+$(call REPRODUCE,full,--compile)
test: | $(STAMP) ## run the test suite (installs what it needs first)
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: | $(STAMP) ## benchmarks: quantizer step cost, data path, training throughput, ImageNet decoding
	$(PY) -m lsq bench quantizer
	$(PY) -m lsq bench data
	$(PY) -m lsq bench train
	$(PY) -m lsq bench imagenet

clean: ## remove generated report files and synthetic/smoke runs (keeps committed real runs)
	rm -rf report/site report/screenshot.png $(RUNS)/synthetic
	find report -maxdepth 1 -name '*.md' ! -name README.md -delete
