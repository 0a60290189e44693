"""Deployment of a quantized run: its ONNX graph, evaluated with ONNX Runtime on the CPU.

``deploy_run(run_dir)`` rebuilds the run's model from ``config.yaml`` and ``checkpoint.pt`` (or ``export.pt``),
writes ``model.onnx`` (:mod:`lsq.quant.onnx_export`; the graph and its forms: docs/deploy.md),
runs it with ONNX Runtime's CPUExecutionProvider over the run's test set (its ``test_subset``,
if it has one) beside the PyTorch model, and writes ``deployed.json``: top-1 and top-5, the
fraction of images whose predicted class equals PyTorch's, the largest |logit difference|, the
operators of the graph ONNX Runtime optimised and ran (saved as ``model.optimized.onnx``),
integer kernels counted against float ones, and the versions and CPU that measured them.

``python -m lsq.deploy RUN_DIR [--out FILE] [--form qdq|qlinear|integer]`` does the same and
prints the key numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lsq import runs
from lsq.engine.checkpoint import load_run_model
from lsq.errors import ExportError, LsqError
from lsq.quant.export import export_summary
from lsq.quant.onnx_export import FORMS, INPUT, OPSET, OUTPUT, to_onnx

ONNX_FILE = "model.onnx"
OPTIMIZED_SUFFIX = ".optimized.onnx"
DEPLOYED = runs.DEPLOYED
PROVIDER = "CPUExecutionProvider"
# float32 rounding alone moves ResNet logits far less than this; an image whose logits move more
# had some activation code rounded the other way (a value within rounding error of a boundary).
LOGIT_TOLERANCE = 1e-3

# Operators of an optimised graph that do the multiply-accumulate work: on integers, or on floats
# (ONNX Runtime's fused and NCHWc variants keep the op names below).
INTEGER_KERNELS = ("QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "QGemm",
                   "MatMulIntegerToFloat", "DynamicQuantizeMatMul")
FLOAT_KERNELS = ("Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul",
                 "ConvTranspose")


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("evaluating an ONNX model needs onnxruntime: "
                          "pip install onnxruntime") from None
    return onnxruntime


# --- a run's model ------------------------------------------------------------------------------



def _input_shape(config) -> tuple[int, int, int, int]:
    from lsq.experiments import get_table

    table = get_table(config.dataset)
    return (1, table.in_channels, table.image_size, table.image_size)


def _default_input_shape(model: nn.Module) -> tuple[int, int, int, int]:
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is None:
        raise ExportError("pass input_shape=(1, C, H, W): the model has no Conv2d to read C from")
    return (1, first_conv.in_channels, 32, 32)


# --- export ------------------------------------------------------------------------------------


def export_onnx(model_or_run: nn.Module | str | Path, path: str | Path, *, form: str = "qdq",
                input_shape: tuple[int, ...] | None = None) -> Path:
    """Write the ONNX graph of a model (quantizers initialised) or of a run directory to
    ``path`` atomically; returns the path. ``input_shape`` ``(1, C, H, W)``: by default the
    run's dataset's image shape, or ``(1, C, 32, 32)`` for a model. The batch stays free."""
    from onnx import helper

    properties = {"lsq.form": form}
    if isinstance(model_or_run, nn.Module):
        model = model_or_run
        input_shape = input_shape or _default_input_shape(model)
    else:
        config, model = load_run_model(model_or_run)
        input_shape = input_shape or _input_shape(config)
        properties.update({"lsq.dataset": config.dataset, "lsq.profile": config.profile,
                           "lsq.row": str(config.row), "lsq.seed": str(config.seed)})
    proto = to_onnx(model, tuple(input_shape), form=form)
    helper.set_model_props(proto, properties)
    path = Path(path)
    runs.atomic_write(path, lambda handle: handle.write(proto.SerializeToString()))
    return path


# --- evaluation --------------------------------------------------------------------------------


def operator_counts(optimized_path: str | Path) -> dict:
    """Operators of an optimised graph (``domain:op`` outside the default domain), and those
    doing the multiply-accumulate work split into integer and float kernels."""
    import onnx

    nodes = onnx.load(str(optimized_path), load_external_data=False).graph.node
    operators = Counter((f"{n.domain}:" if n.domain else "") + n.op_type for n in nodes)
    integer = Counter(n.op_type for n in nodes if n.op_type in INTEGER_KERNELS)
    floating = Counter(n.op_type for n in nodes if n.op_type in FLOAT_KERNELS)
    total = sum(integer.values()) + sum(floating.values())
    return {"operators": dict(sorted(operators.items())),
            "integer_kernels": dict(sorted(integer.items())),
            "float_kernels": dict(sorted(floating.items())),
            "integer_kernel_fraction": sum(integer.values()) / total if total else None}


def _session(onnx_path: Path, optimized_path: Path):
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(optimized_path)
    options.intra_op_num_threads = torch.get_num_threads()
    # Level 3 hides the warning that an ORT_ENABLE_ALL graph holds CPU-specific (NCHWc) ops:
    # the saved graph is kept to count what ran here, not to be shipped.
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), options, providers=[PROVIDER])


def _top1_top5(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
    return np.array([int(top[:, 0].sum()), int(top.any(1).sum())])


def evaluate_onnx(run_dir_or_model: nn.Module | str | Path, onnx_path: str | Path, test_loader,
                  *, optimized_path: str | Path | None = None) -> dict:
    """Run ``onnx_path`` with ONNX Runtime (CPU) and the PyTorch model over ``test_loader``
    (``(images, labels)`` batches); returns top-1/top-5 of both, agreement of the predicted
    classes, the largest |logit difference| and the optimised graph's operators
    (:func:`operator_counts`), and ``logit_diff_images``: the images whose logits differ by
    more than ``LOGIT_TOLERANCE`` (the graph is saved to ``optimized_path``, by default beside
    ``onnx_path`` as ``<stem>.optimized.onnx``)."""
    model = (run_dir_or_model if isinstance(run_dir_or_model, nn.Module)
             else load_run_model(run_dir_or_model)[1])
    model.eval()
    device = next(model.parameters()).device
    onnx_path = Path(onnx_path)
    optimized_path = Path(optimized_path or onnx_path.with_name(onnx_path.stem + OPTIMIZED_SUFFIX))
    session = _session(onnx_path, optimized_path)
    if hasattr(test_loader, "set_epoch"):
        test_loader.set_epoch(0)
    n = agree = differing = 0
    hits = {"onnx": np.zeros(2, np.int64), "pytorch": np.zeros(2, np.int64)}  # top-1, top-5
    max_diff, ort_seconds = 0.0, 0.0
    for images, labels in test_loader:
        with torch.no_grad():
            reference = model(images.to(device)).float().cpu()
        batch = images.detach().float().cpu().contiguous().numpy()
        start = time.perf_counter()
        logits = torch.from_numpy(session.run([OUTPUT], {INPUT: batch})[0])
        ort_seconds += time.perf_counter() - start
        labels = labels.cpu()
        hits["onnx"] += _top1_top5(logits, labels)
        hits["pytorch"] += _top1_top5(reference, labels)
        agree += int((logits.argmax(1) == reference.argmax(1)).sum())
        diff = (logits - reference).abs().amax(1)
        max_diff = max(max_diff, float(diff.max()))
        differing += int((diff > LOGIT_TOLERANCE).sum())
        n += labels.shape[0]
    if n == 0:
        raise ExportError("the test loader yielded no images to evaluate the ONNX model on")
    (top1, top5), (pt_top1, pt_top5) = (100.0 * hits[k] / n for k in ("onnx", "pytorch"))
    return {
        "test_images": n,
        "top1": float(top1), "top5": float(top5),
        "pytorch_top1": float(pt_top1), "pytorch_top5": float(pt_top5),
        "agreement": agree / n, "disagreements": n - agree,
        "max_abs_logit_diff": max_diff,
        "logit_diff_images": differing, "logit_tolerance": LOGIT_TOLERANCE,
        "onnx_images_per_second": n / ort_seconds if ort_seconds > 0 else None,
        "optimized_onnx": str(optimized_path),
        **operator_counts(optimized_path),
    }


# --- a run, end to end -------------------------------------------------------------------------


def deploy_run(run_dir: str | Path, out: str | Path | None = None, *, form: str = "qdq") -> dict:
    """Export a quantized run to ``out`` (default ``RUN_DIR/model.onnx``), evaluate it with ONNX
    Runtime on the run's test set, write ``RUN_DIR/deployed.json``; returns its record."""
    import onnx
    import onnxruntime

    from lsq.data import build_data
    from lsq.engine.host import device_description

    run_dir = Path(run_dir)
    config, model = load_run_model(run_dir)
    onnx_path = export_onnx(model, Path(out) if out else run_dir / ONNX_FILE, form=form,
                            input_shape=_input_shape(config))
    cpu = torch.device("cpu")
    data = build_data(config.dataset, config.data, batch_size=config.optim.batch_size,
                      eval_batch_size=config.optim.eval_batch_size, device=cpu, seed=config.seed)
    result = evaluate_onnx(model, onnx_path, data.test)
    summary = runs.read_summary(run_dir) or {}
    sizes = export_summary(model)
    weights_from = None  # the weights' origin when they are a retraining's (lsq export --weights-from)
    if not (run_dir / runs.CHECKPOINT).is_file():
        from lsq.quant.export import load_export

        weights_from = load_export(run_dir / runs.EXPORT).get("weights_from")
    record = {
        "run_dir": str(run_dir), "dataset": config.dataset, "profile": config.profile,
        "row": config.row, "seed": config.seed, "ablation": config.ablation,
        "data_kind": data.data_kind,
        "form": form, "opset": OPSET, "onnx": str(onnx_path),
        "onnx_bytes": onnx_path.stat().st_size,
        # The integer export (export.pt's tensors) against the same model in float32.
        "export_bytes": sizes["export_bytes"], "float32_bytes": sizes["float32_bytes"],
        "weights": runs.CHECKPOINT if weights_from is None and (run_dir / runs.CHECKPOINT).is_file()
        else runs.EXPORT, "weights_from": weights_from,
        **result,
        # What training measured on the same images (None for an unfinished run).
        "summary_top1": summary.get("final_top1"),
        "provider": PROVIDER, "onnx_version": onnx.__version__,
        "onnxruntime_version": onnxruntime.__version__, "torch_version": torch.__version__,
        "device": device_description(cpu), "git_sha": runs.git_sha(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    runs.write_json(run_dir / DEPLOYED, record)
    return record


def _kernels(counts: dict) -> str:
    return ", ".join(f"{op} x{n}" for op, n in counts.items()) or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lsq.deploy",
        description="Export a quantized run to ONNX, evaluate it with ONNX Runtime (CPU) on the "
                    "run's test set and write RUN_DIR/deployed.json.")
    parser.add_argument("run_dir")
    parser.add_argument("--out", help=f"ONNX file (default: RUN_DIR/{ONNX_FILE})")
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    parser.add_argument("--form", default="qdq", choices=FORMS,
                        help="qdq: QuantizeLinear/DequantizeLinear, exact (default); qlinear: "
                             "BatchNorm folded and int32 biases, fused by ONNX Runtime into "
                             "QLinearConv, not exact; integer: ConvInteger/MatMulInteger, exact")
    args = parser.parse_args(argv)
    try:
        record = deploy_run(args.run_dir, args.out, form=args.form)
    except LsqError as error:
        if os.environ.get("LSQ_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    fraction = record["integer_kernel_fraction"]
    print(f"{record['onnx']}: {record['form']} ONNX graph, {record['onnx_bytes']} bytes")
    print(f"ONNX Runtime {record['onnxruntime_version']} ({PROVIDER}) on {record['test_images']} "
          f"{record['data_kind']} test images: top-1 {record['top1']:.2f}%, top-5 "
          f"{record['top5']:.2f}% (PyTorch {record['pytorch_top1']:.2f}%, "
          f"{record['pytorch_top5']:.2f}%)")
    print(f"same class as PyTorch: {100 * record['agreement']:.2f}% of images "
          f"({record['disagreements']} differ); largest |logit difference| "
          f"{record['max_abs_logit_diff']:.3g}")
    print(f"integer kernels: {_kernels(record['integer_kernels'])}; float kernels: "
          f"{_kernels(record['float_kernels'])}"
          + (f" ({100 * fraction:.0f}% integer)" if fraction is not None else ""))
    print(f"wrote {Path(record['run_dir']) / DEPLOYED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
