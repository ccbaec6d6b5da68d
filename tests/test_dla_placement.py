"""DLA placement parsed from TensorRT's builder log (tests/fixtures/trt_dla_placement.log: a DLA build's
report in the format trtexec --verbose prints it on an Orin; written for the test, not captured on a board)."""

from __future__ import annotations

from pathlib import Path

from edgeseg.engine.sidecar import parse_layer_placement, placement_summary

LOG = Path(__file__).parent / "fixtures" / "trt_dla_placement.log"


def test_dla_subgraphs_and_gpu_fallbacks_are_listed():
    placement = parse_layer_placement(LOG.read_text().splitlines())
    assert placement["found"]
    assert placement["dla_subgraphs"] == [
        "{ForeignNode[/segformer/encoder/patch_embeddings.0/proj/Conv.../segformer/encoder/patch_embeddings.0/proj/"
        "Conv_output_0]}",
        "{ForeignNode[/decode_head/linear_fuse/Conv.../decode_head/classifier/Conv]}"]
    assert [layer["type"] for layer in placement["gpu_layers"]] == ["SHUFFLE", "NORMALIZATION", "SOFTMAX", "RESIZE"]
    assert placement["gpu_layers"][2]["name"] == "/segformer/encoder/block.0.0/attention/self/Softmax"
    summary = placement_summary(placement, dla_core=0)
    assert summary[0] == "DLA placement: 2 subgraph(s) on DLA core 0, 4 layer(s) on the GPU"
    assert "  GPU: RESIZE /decode_head/Resize" in summary


def test_messages_as_the_python_logger_gets_them():
    """The ILogger receives the message without trtexec's '[I] [TRT]' prefix."""
    placement = parse_layer_placement(["---------- Layers Running on DLA ----------",
                                       "[DlaLayer] {ForeignNode[conv1...relu5]}",
                                       "---------- Layers Running on GPU ----------"])
    assert placement == {"dla_subgraphs": ["{ForeignNode[conv1...relu5]}"], "gpu_layers": [], "found": True}


def test_no_report_is_said():
    placement = parse_layer_placement(["[I] [TRT] Loaded engine size: 3 MiB"])
    assert not placement["found"]
    assert "printed no layer placement" in placement_summary(placement, 0)[0]
