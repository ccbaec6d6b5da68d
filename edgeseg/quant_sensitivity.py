"""Per-layer sensitivity of an INT8 graph against its FP32 original, and ONNX evaluation for the budget loop.

Sensitivity of a layer = the error its own output gains over the error already present at its input
(normalised MSE against FP32 on a few calibration images). Ranking by that increase, rather than by the
raw error, blames the layer that creates the error, not every layer downstream that inherits it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edgeseg.quantize import QuantizeConfig
    from edgeseg.zoo.contract import Preprocessing

QUANTIZABLE = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Mul", "Concat", "Resize")


def _with_outputs(path: Path, names: list[str], scratch: Path) -> Path:
    import onnx

    graph = onnx.load(str(path))
    present = {output.name for output in graph.graph.output}
    for name in names:
        if name not in present:
            graph.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    out = scratch / f"probe-{path.stem}.onnx"
    onnx.save(graph, str(out))
    return out


def _nmse(reference: np.ndarray, actual: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    return float(((reference - actual.astype(np.float64)) ** 2).mean() / max((reference ** 2).mean(), 1e-12))


def rank_sensitivity(fp32_path: Path, int8_path: Path, images: list[Path], preprocessing: Preprocessing,
                     input_name: str) -> list[tuple[str, float]]:
    """[(node name, error increase)] for the quantized nodes, most sensitive first."""
    import tempfile

    import onnx

    from edgeseg.calibration import calibration_batches
    from edgeseg.runners.ort import ort_session

    fp32 = onnx.load(str(fp32_path), load_external_data=False)
    int8 = onnx.load(str(int8_path), load_external_data=False)
    int8_nodes = {node.name for node in int8.graph.node}
    int8_tensors = {out for node in int8.graph.node for out in node.output}
    producers = {out: node for node in fp32.graph.node for out in node.output}
    # Quantized nodes keep their names in the Q/DQ graph; compare only tensors both graphs still have.
    candidates = [node for node in fp32.graph.node if node.op_type in QUANTIZABLE and node.name in int8_nodes
                  and node.output[0] in int8_tensors]
    tensors = sorted(({node.output[0] for node in candidates} |
                      {inp for node in candidates for inp in node.input if inp in producers}) & int8_tensors)
    errors = {name: 0.0 for name in tensors}
    with tempfile.TemporaryDirectory(prefix="edgeseg-sens-") as scratch:
        scratch = Path(scratch)
        reference_session, _ = ort_session(_with_outputs(fp32_path, tensors, scratch), device="cpu")
        quantized_session, _ = ort_session(_with_outputs(int8_path, tensors, scratch), device="cpu")
        reference_names = [o.name for o in reference_session.get_outputs()]
        quantized_names = [o.name for o in quantized_session.get_outputs()]
        for batch in calibration_batches(images, preprocessing):
            reference = dict(zip(reference_names, reference_session.run(None, {input_name: batch})))
            quantized = dict(zip(quantized_names, quantized_session.run(None, {input_name: batch})))
            for name in tensors:
                if name in reference and name in quantized:
                    errors[name] += _nmse(reference[name], quantized[name]) / len(images)
    ranking = []
    for node in candidates:
        inherited = max((errors.get(inp, 0.0) for inp in node.input if inp in producers), default=0.0)
        ranking.append((node.name, errors.get(node.output[0], 0.0) - inherited))
    return sorted(ranking, key=lambda item: -item[1])


def evaluate_onnx(path: Path, cfg: QuantizeConfig) -> float:
    """mIoU of an ONNX model on cfg's eval split, run on ONNX Runtime CPU."""
    from edgeseg.data.datasets import open_dataset
    from edgeseg.evaluate import evaluate
    from edgeseg.runners.ort import OrtRunner

    with OrtRunner(path, device="cpu", threads=cfg.threads) as runner:
        dataset = open_dataset(cfg.eval_dataset, cfg.eval_split, cfg.data_root, label_set=runner.preprocessing)
        scores = evaluate(runner.infer, dataset, runner.preprocessing, limit=cfg.eval_limit,
                          description=f"eval {Path(path).name}")
    return scores.miou
