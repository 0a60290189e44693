"""TrainStep: the fused-SGD update used with CUDA graphs equals the optimizer's own step, the
on-device tallies are right, and (on a CUDA machine) a replayed graph trains like eager steps."""

import copy
import os
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from lsq.config import make_config
from lsq.engine.step import NO_BAD_STEP, WARMUP_STEPS, Context, TrainStep
from lsq.engine.fastpath import CPU_COMPILE_MIN_STEPS, resolve_fast_path
from lsq.engine.recipe import build_optimizer, build_run_model, build_scheduler, calibrate
from lsq.errors import TrainingError
from lsq.quant.inspect import step_size_params


class _Batches:
    def __init__(self, batches):
        self.batches = batches

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def _setup(row=4, device="cpu", cuda_graphs=False, fused_update=None, seed=0):
    torch.manual_seed(seed)
    config = make_config("synthetic", row, "smoke")
    model = build_run_model(config).to(device)
    ctx = Context(torch.device(device), progress=False, cuda_graphs=cuda_graphs)
    ctx.step_sizes = step_size_params(model)
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 32, 32, generator=generator).to(device),
                torch.randint(0, 10, (8,), generator=generator).to(device)) for _ in range(6)]
    batches.append((batches[0][0][:5], batches[0][1][:5]))  # an epoch's smaller last batch
    calibrate(model, _Batches(batches), ctx)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, len(batches))
    step = TrainStep(model, optimizer, ctx, fused_update=fused_update)
    return model, optimizer, scheduler, step, batches


def _train(model, scheduler, step, batches):
    model.train()
    step.reset()
    for images, labels in batches:
        step(images, labels)
        scheduler.step()


@pytest.mark.parametrize("row", [0, 4])
def test_fused_update_matches_the_optimizer_step(row):
    """The graph-mode update (fused kernel, lr from a device tensor refreshed every step, momentum
    in the optimizer's state) follows torch's SGD through a changing lr and both groups. Momentum
    gets a looser tolerance: a last-bit difference can move a weight across a rounding threshold,
    which changes that step's gradient (not the update rule)."""
    model_a, opt_a, sched_a, step_a, batches = _setup(row, fused_update=False)
    model_b, opt_b, sched_b, step_b, _ = _setup(row, fused_update=True)
    for _ in range(2):
        _train(model_a, sched_a, step_a, batches)
        _train(model_b, sched_b, step_b, batches)
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    state_a, state_b = opt_a.state_dict(), opt_b.state_dict()
    assert state_a["state"].keys() == state_b["state"].keys()
    for key in state_a["state"]:
        torch.testing.assert_close(state_a["state"][key]["momentum_buffer"],
                                   state_b["state"][key]["momentum_buffer"], rtol=1e-3, atol=1e-4)


def test_fused_update_resumes_from_a_foreach_checkpoint():
    """Optimizer state written by the default step (a CPU run) is what the fused update reads."""
    model_a, opt_a, sched_a, step_a, batches = _setup(4, fused_update=False)
    _train(model_a, sched_a, step_a, batches)
    model_b, opt_b, sched_b, step_b, _ = _setup(4, fused_update=True)
    model_b.load_state_dict(model_a.state_dict())
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    sched_b.load_state_dict(sched_a.state_dict())
    _train(model_a, sched_a, step_a, batches)
    _train(model_b, sched_b, step_b, batches)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_tallies_count_loss_and_hits_on_the_device():
    model, _, scheduler, step, batches = _setup(0)
    reference = copy.deepcopy(model)
    _train(model, scheduler, step, batches[:1])
    images, labels = batches[0]
    reference.train()
    logits = reference(images)
    loss_sum, correct, bad = step.tallies()
    assert loss_sum.item() == pytest.approx(F.cross_entropy(logits, labels).item() * 8, rel=1e-5)
    assert correct.item() == (logits.argmax(1) == labels).sum().item()
    assert bad.item() == NO_BAD_STEP and step.first_bad_step() is None


def test_first_bad_step_names_the_earliest_non_finite_loss():
    model, _, _, step, batches = _setup(0)
    model.train()
    step.reset()
    step(*batches[0])
    poisoned = batches[1][0].clone()
    poisoned[0, 0, 0, 0] = float("nan")
    step(poisoned, batches[1][1])
    step(*batches[2])
    assert step.first_bad_step() == 1
    step.reset()
    assert step.first_bad_step() is None


def test_check_runs_before_the_update_on_the_eager_path():
    """A check that raises leaves the parameters as they were (so the culprit layer can be named
    on the batch that failed)."""
    model, _, _, step, batches = _setup(0)
    before = [p.detach().clone() for p in model.parameters()]

    def stop(_images):
        raise RuntimeError("stop")

    model.train()
    with pytest.raises(RuntimeError, match="stop"):
        step(*batches[0], stop)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fast_path_defaults_and_refusals():
    config = make_config("synthetic", 1, "smoke")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert config.compile_model is None and config.cuda_graphs is None
    assert resolve_fast_path(config, cpu, 1) == (False, False)
    assert resolve_fast_path(config, cuda, 1) == (True, True)
    assert resolve_fast_path(config, cuda, 2) == (True, False)  # no graphs under DDP by default
    # The CPU compiles runs long enough for the compile time to pay off, unless told otherwise.
    assert resolve_fast_path(config, cpu, 1, train_steps=CPU_COMPILE_MIN_STEPS - 1) == (False, False)
    assert resolve_fast_path(config, cpu, 1, train_steps=CPU_COMPILE_MIN_STEPS) == (True, False)
    from dataclasses import replace
    assert resolve_fast_path(replace(config, compile_model=False), cpu, 1,
                             train_steps=10 * CPU_COMPILE_MIN_STEPS) == (False, False)
    assert resolve_fast_path(replace(config, compile_model=True), cpu, 1) == (True, False)
    with pytest.raises(TrainingError, match="--cuda-graphs needs a CUDA device"):
        resolve_fast_path(replace(config, cuda_graphs=True), cpu, 1)
    with pytest.raises(TrainingError, match="torchrun"):
        resolve_fast_path(replace(config, cuda_graphs=True), cuda, 2)


def test_no_cpu_auto_compile_without_a_cxx_compiler(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    config = make_config("synthetic", 1, "smoke")
    cpu = torch.device("cpu")
    assert resolve_fast_path(config, cpu, 1, train_steps=10 * CPU_COMPILE_MIN_STEPS) == (False, False)


def test_cli_refuses_cuda_graphs_on_the_cpu(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lsq", "train", "--dataset", "synthetic", "--row", "0",
         "--device", "cpu", "--cuda-graphs", "--runs-dir", str(tmp_path), "--no-progress"],
        capture_output=True, text=True,
        env={k: v for k, v in os.environ.items() if k != "LSQ_DEBUG"})
    assert result.returncode == 2
    assert "--cuda-graphs needs a CUDA device" in result.stderr
    assert not any(tmp_path.rglob("*.pt"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("row", [0, 4])
def test_cuda_graph_replay_trains_like_eager_steps(row):
    """Same batches, same fused update: the replayed graph ends where eager steps end (up to
    cuDNN's run-to-run nondeterminism), with an eager smaller last batch in between."""
    torch.backends.cudnn.deterministic = True
    try:
        model_a, _, sched_a, step_a, batches = _setup(row, "cuda", cuda_graphs=False, fused_update=True)
        model_b, _, sched_b, step_b, _ = _setup(row, "cuda", cuda_graphs=True)
        for _ in range(2):
            _train(model_a, sched_a, step_a, batches)
            _train(model_b, sched_b, step_b, batches)
        torch.cuda.synchronize()
        assert step_b.graph is not None and step_b.replays == 2 * (len(batches) - 1) - WARMUP_STEPS
        for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
        for a, b in zip(step_a.tallies()[:2], step_b.tallies()[:2]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    finally:
        torch.backends.cudnn.deterministic = False


class _Counting(torch.nn.Module):
    """Stands in for a compiled or DDP wrapper: same parameters, counts its calls."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize("world_size, wrapper_calls", [(1, 6), (2, 7)])
def test_odd_size_batch_skips_the_wrapper_only_in_one_process(world_size, wrapper_calls):
    """The smaller last batch runs on the plain module (no recompile of a compiled model), except
    under DDP, where leaving the wrapper would skip the gradient all-reduce."""
    model, optimizer, scheduler, _, batches = _setup(0)
    wrapper = _Counting(model)
    ctx = Context(torch.device("cpu"), progress=False, world_size=world_size)
    step = TrainStep(wrapper, optimizer, ctx, eager_model=model)
    _train(model, scheduler, step, batches)  # 6 full batches, then one of 5 images
    assert wrapper.calls == wrapper_calls


# --- distillation (the LSQ paper's: teacher = the run's own float baseline, T = 1, 1:1) ----------


def test_distillation_term_is_the_kl_to_the_teacher_and_zero_for_the_same_logits():
    from lsq.engine.step import distillation_loss

    torch.manual_seed(0)
    student, teacher = torch.randn(16, 10, dtype=torch.float64), torch.randn(16, 10, dtype=torch.float64)
    assert distillation_loss(student, student).item() == pytest.approx(0.0, abs=1e-12)
    p = teacher.softmax(1)
    expected = (p * (p.log() - student.log_softmax(1))).sum(1).mean()  # KL(teacher || student)
    assert distillation_loss(student, teacher).item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_distilled_step_trains_the_student_only_and_adds_the_kl_to_its_loss():
    model, optimizer, scheduler, plain, batches = _setup(4)
    teacher = build_run_model(make_config("synthetic", 0, "smoke")).eval().requires_grad_(False)
    before = copy.deepcopy(teacher.state_dict())
    distilled = TrainStep(model, optimizer, plain.ctx, teacher=teacher)
    reference = copy.deepcopy(model)
    images, labels = batches[0]
    model.train()
    distilled(images, labels)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    reference.train()
    with torch.no_grad():
        logits = reference(images)
        expected = F.cross_entropy(logits, labels) + F.kl_div(
            logits.log_softmax(1), teacher(images).log_softmax(1), log_target=True,
            reduction="batchmean")
    assert distilled.tallies()[0].item() == pytest.approx(expected.item() * 8, rel=1e-4)


def test_distillation_is_a_row_setting_of_the_quantized_rows_only():
    from lsq.config import ConfigError

    config = make_config("synthetic", 4, "smoke", ablation="distill")
    assert config.optim.distill and config.run_name == "row4-distill"
    with pytest.raises(ConfigError, match="distill"):
        make_config("synthetic", 0, "smoke").with_overrides("optim.distill=true")


def test_a_distilled_run_trains_against_its_own_float_baseline(tmp_path):
    from dataclasses import replace

    from lsq import runs as runfmt
    from lsq.engine.run import fit

    small = ("data.train_subset=64", "data.test_subset=32", "optim.batch_size=32")

    def config(row, ablation=None):
        return replace(make_config("synthetic", row, "smoke", ablation=ablation).with_overrides(*small),
                       device="cpu")

    for run in (config(0), config(1), config(1, "distill")):
        fit(run, tmp_path, progress=False, log=lambda *_: None)
    plain, distilled = (runfmt.read_metrics(config(1, a).run_dir(tmp_path) / runfmt.METRICS)[-1]
                        for a in (None, "distill"))
    # Same start and batches: the recorded training loss adds the KL term.
    assert distilled["train_loss"] != plain["train_loss"]
    assert runfmt.read_summary(config(1, "distill").run_dir(tmp_path))["ablation"] == "distill"
