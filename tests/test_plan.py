"""The TensorRT build plan: right decisions per (target, precision, graph, TensorRT); trtexec and JSON agree."""

from __future__ import annotations

import itertools
import json
import pytest

from edgeseg.engine.plan import BuildOptions, BuildPlan, DynamicShape, StaticShape, plan_build
from edgeseg.errors import EdgesegError, UsageError
from edgeseg.target_registry import list_targets, load_target

ENGINE_TARGETS = [target.name for target in list_targets() if target.builds_engines and not target.from_device]
GRAPHS = {  # name -> (onnx_precision, onnx_has_qdq)
    "fp32": ("fp32", False),
    "fp16": ("fp16", False),
    "qdq": ("int8-qdq", True),
    "qdq-fp16": ("fp16", True),  # Q/DQ INT8 with fp16 float parts
}
PRECISION_FLAGS = {"FP16", "INT8"}


def options(precision="fp16", graph="fp32", **kwargs) -> BuildOptions:
    onnx_precision, has_qdq = GRAPHS[graph]
    return BuildOptions(precision=precision, onnx_precision=onnx_precision, onnx_has_qdq=has_qdq, **kwargs)


def plan(target="jetson-orin-nano", precision="fp16", graph="fp32", trt=None, **kwargs) -> BuildPlan:
    return plan_build(load_target(target), "model.onnx", options(precision, graph, **kwargs), tensorrt_version=trt)


def parse_trtexec(argv: list[str]) -> dict[str, str | bool]:
    assert argv[0] == "trtexec"
    parsed = {}
    for arg in argv[1:]:
        assert arg.startswith("--")
        key, has_value, value = arg.partition("=")
        assert key not in parsed, f"{key} given twice"
        parsed[key] = value if has_value else True
    return parsed


def shape_of(spec: str, name: str) -> tuple[int, ...]:
    tensor, _, dims = spec.rpartition(":")
    assert tensor == name
    return tuple(int(dim) for dim in dims.split("x"))


def assert_trtexec_matches(built: BuildPlan) -> None:
    """Parse the rendered command back and compare every flag with the plan field it came from."""
    args = parse_trtexec(built.to_trtexec("out/model.engine"))
    assert args.pop("--onnx") == built.onnx_path
    assert args.pop("--saveEngine") == "out/model.engine"
    assert bool(args.pop("--stronglyTyped", False)) == ("STRONGLY_TYPED" in built.network_flags)
    assert bool(args.pop("--fp16", False)) == ("FP16" in built.builder_flags)
    assert bool(args.pop("--int8", False)) == ("INT8" in built.builder_flags)
    assert bool(args.pop("--allowGPUFallback", False)) == ("GPU_FALLBACK" in built.builder_flags)
    assert (args.pop("--sparsity", None) == "enable") == ("SPARSE_WEIGHTS" in built.builder_flags)
    assert args.pop("--calib", None) == built.calibration_cache
    pool, _, size = args.pop("--memPoolSize").partition(":")
    assert pool == "workspace" and int(size.removesuffix("M")) == built.workspace_mb
    level = args.pop("--builderOptimizationLevel", None)
    assert level == (None if built.builder_optimization_level is None else str(built.builder_optimization_level))
    assert args.pop("--useDLACore", None) == (None if built.dla_core is None else str(built.dla_core))
    assert args.pop("--timingCacheFile", None) == built.timing_cache
    if built.dynamic:
        assert shape_of(args.pop("--minShapes"), built.input_name) == built.min_shape
        assert shape_of(args.pop("--optShapes"), built.input_name) == built.opt_shape
        assert shape_of(args.pop("--maxShapes"), built.input_name) == built.max_shape
    else:
        assert shape_of(args.pop("--shapes"), built.input_name) == built.opt_shape == built.min_shape
    assert not args, f"flags with no plan field behind them: {args}"


def assert_json_round_trip(built: BuildPlan) -> None:
    assert BuildPlan.from_dict(json.loads(json.dumps(built.to_dict()))) == built


# ---------------------------------------------------------------------------------------------------------------
# The whole matrix: whatever is accepted obeys the rules; whatever is refused is refused with a UsageError.

MATRIX = list(itertools.product(ENGINE_TARGETS, ("fp32", "fp16", "int8", "fp8", "best"), GRAPHS,
                                ("8.5", "8.6", "10.3", "10.16", "11.4.1")))


@pytest.mark.parametrize("target, precision, graph, trt", MATRIX)
def test_every_combination_is_planned_right_or_refused(target, precision, graph, trt):
    try:
        built = plan(target, precision, graph, trt=trt)
    except UsageError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) < 300
        return
    major = int(trt.split(".")[0])
    assert built.engine_precision in load_target(target).precisions
    if precision != "best":
        assert built.engine_precision == precision  # never silently another precision
    if major >= 11:
        assert built.strongly_typed and not PRECISION_FLAGS & set(built.builder_flags)
        assert built.calibrator is None and "STRONGLY_TYPED" not in built.network_flags
    if major == 10 and graph != "fp32":
        assert built.strongly_typed and built.network_flags == ("STRONGLY_TYPED",)
        assert not PRECISION_FLAGS & set(built.builder_flags)
    if major == 8:
        assert not built.strongly_typed and built.network_flags == ("EXPLICIT_BATCH",)
        assert built.builder_optimization_level is None if trt == "8.5" else built.builder_optimization_level == 3
    if built.calibrator:
        assert major < 11 and graph == "fp32" and built.engine_precision == "int8"
    assert_trtexec_matches(built)
    assert_json_round_trip(built)


# ---------------------------------------------------------------------------------------------------------------
# TensorRT 11: strongly typed always, precision only from the graph

def test_trt11_fp16_graph_is_strongly_typed_with_no_precision_flags():
    built = plan("rtx-4090", "fp16", "fp16", trt="11.4.1")
    assert built.strongly_typed and built.builder_flags == () and built.network_flags == ()
    argv = built.to_trtexec("m.engine")
    assert not {"--fp16", "--int8", "--stronglyTyped"} & set(argv)  # 11 removed them; typing is always strong
    assert "network = builder.create_network(0)" in built.to_api_calls()
    assert not any("BuilderFlag.FP16" in call for call in built.to_api_calls())


def test_trt11_qdq_graph_builds_int8():
    built = plan("h100", "int8", "qdq", trt="11.0")
    assert built.engine_precision == "int8" and built.strongly_typed and built.calibrator is None


def test_trt11_refuses_int8_without_qdq_and_says_to_quantize():
    with pytest.raises(EdgesegError, match="run 'edgeseg quantize' first"):
        plan("rtx-3090", "int8", "fp32", trt="11.1")


def test_trt11_refuses_fp16_from_an_fp32_graph_and_says_to_export_fp16():
    with pytest.raises(UsageError, match="export the fp16 ONNX"):
        plan("rtx-3090", "fp16", "fp32", trt="11.1")


# ---------------------------------------------------------------------------------------------------------------
# TensorRT 10

def test_trt10_fp16_graph_is_strongly_typed():
    built = plan("jetson-orin-nano", "fp16", "fp16", trt="10.3")
    assert built.network_flags == ("STRONGLY_TYPED",) and built.builder_flags == ()
    assert "--stronglyTyped" in built.to_trtexec("m.engine") and "--fp16" not in built.to_trtexec("m.engine")
    assert ("network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))"
            in built.to_api_calls())


def test_trt10_qdq_graph_is_strongly_typed_without_calibrator():
    built = plan("jetson-orin-nx", "int8", "qdq", trt="10.3")
    assert built.strongly_typed and built.builder_flags == () and built.calibrator is None


def test_trt10_fp16_from_fp32_graph_uses_the_deprecated_flag_with_a_warning():
    built = plan("jetson-orin-nano", "fp16", "fp32", trt="10.3")
    assert not built.strongly_typed and built.builder_flags == ("FP16",)
    assert any("deprecated" in warning and "fp16 ONNX" in warning for warning in built.warnings)
    assert "config.set_flag(trt.BuilderFlag.FP16)" in built.to_api_calls()


def test_trt10_int8_calibration_is_allowed_but_warned():
    built = plan("rtx-3090", "int8", "fp32", trt="10.16", calibration_cache="cal/model.cache")
    assert built.calibrator == "entropy2" and built.calibration_cache == "cal/model.cache"
    assert any("edgeseg quantize" in warning for warning in built.warnings)


def test_a_request_that_disagrees_with_the_graph_is_refused():
    with pytest.raises(UsageError, match="already carries fp16"):
        plan("rtx-3090", "fp32", "fp16", trt="10.16")
    with pytest.raises(UsageError, match="already carries INT8 Q/DQ"):
        plan("rtx-3090", "fp16", "qdq", trt="10.16")
    with pytest.raises(UsageError, match="no Q/DQ nodes"):
        plan_build(load_target("l4"), "m.onnx", BuildOptions(precision="int8", onnx_precision="int8-qdq"))


def test_best_takes_the_graph_precision_and_says_what_it_chose():
    assert plan("l4", "best", "qdq", trt="10.16").engine_precision == "int8"
    from_fp32 = plan("l4", "best", "fp32", trt="10.16")
    assert from_fp32.engine_precision == "fp16" and from_fp32.warnings
    trt11 = plan("l4", "best", "fp32", trt="11.4.1")
    assert trt11.engine_precision == "fp32" and any("building fp32" in w for w in trt11.warnings)


# ---------------------------------------------------------------------------------------------------------------
# TensorRT 8.x (JetPack 5, Xavier)

def test_xavier_int8_without_qdq_on_trt85_uses_the_entropy_calibrator_and_its_cache():
    built = plan("jetson-xavier-nx", "int8", "fp32")  # the target's default: TensorRT 8.5
    assert built.tensorrt_version == "8.5"
    assert built.builder_flags == ("INT8",) and built.calibrator == "entropy2"
    assert built.calibration_cache == "model.calibration.cache"
    assert built.builder_optimization_level is None  # TensorRT 8.5 has no such setting
    args = parse_trtexec(built.to_trtexec("m.engine"))
    assert args["--int8"] is True and args["--calib"] == "model.calibration.cache"
    assert args["--memPoolSize"] == "workspace:1024"  # 8.x: MiB without a suffix
    assert "--builderOptimizationLevel" not in args and "--stronglyTyped" not in args
    calls = built.to_api_calls()
    assert any(call.startswith("config.int8_calibrator = EntropyCalibrator2") for call in calls)
    assert "network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))" in calls


def test_xavier_qdq_on_trt85_is_explicit_quantization_without_calibrator():
    built = plan("jetson-agx-xavier", "int8", "qdq")
    assert built.builder_flags == ("INT8",) and built.calibrator is None and built.calibration_cache is None
    fp16_parts = plan("jetson-agx-xavier", "int8", "qdq-fp16")
    assert fp16_parts.builder_flags == ("INT8", "FP16")  # the graph's float layers are fp16


def test_trt85_with_a_non_default_optimization_level_warns():
    built = plan("jetson-agx-xavier", "fp16", builder_optimization_level=5)
    assert built.builder_optimization_level is None
    assert any("optimization level" in warning for warning in built.warnings)


def test_a_tensorrt_the_jetson_does_not_ship_is_warned_about():
    built = plan("jetson-xavier-nx", "fp16", trt="10.3")
    assert any("JetPack 5.1: TensorRT 8.5" in warning for warning in built.warnings)
    assert not any("ships TensorRT" in w for w in plan("jetson-orin-nano", "fp16", "fp16", trt="10.3").warnings)


def test_old_or_malformed_tensorrt_versions_are_refused():
    with pytest.raises(UsageError, match="too old"):
        plan("rtx-3090", "fp16", trt="8.2")
    with pytest.raises(UsageError, match="not like 10.3"):
        plan("rtx-3090", "fp16", trt="ten")


# ---------------------------------------------------------------------------------------------------------------
# Target capabilities: precision, DLA, sparsity

def test_fp8_is_refused_on_orin_naming_the_target():
    with pytest.raises(UsageError, match="target jetson-agx-orin does not support fp8"):
        plan("agx-orin", "fp8", trt="10.3")


def test_fp8_on_an_fp8_gpu_needs_an_fp8_graph():
    with pytest.raises(UsageError, match="FP8 Q/DQ"):
        plan("h100", "fp8", "fp16", trt="10.16")


def test_dla_build_on_agx_orin():
    built = plan("agx-orin", "fp16", "fp16", trt="10.3", dla_core=1)
    assert built.dla_core == 1 and built.resolved_from == "agx-orin"
    # TensorRT 10 builds DLA engines weakly typed: the fp16 graph's precision is set with the flag.
    assert not built.strongly_typed and built.builder_flags == ("FP16", "GPU_FALLBACK")
    args = parse_trtexec(built.to_trtexec("m.engine"))
    assert args["--useDLACore"] == "1" and args["--allowGPUFallback"] is True and args["--fp16"] is True
    calls = built.to_api_calls()
    assert "config.default_device_type = trt.DeviceType.DLA" in calls and "config.DLA_core = 1" in calls
    no_fallback = plan("agx-orin", "int8", "qdq", trt="10.3", dla_core=0, gpu_fallback=False)
    assert "GPU_FALLBACK" not in no_fallback.builder_flags
    assert plan("jetson-agx-orin", "fp16", "fp16", trt="11.4.1", dla_core=0).strongly_typed


@pytest.mark.parametrize("target", ["rtx-4090", "a100", "h100", "l4", "rtx-3090", "jetson-orin-nano"])
def test_dla_is_refused_where_there_is_none(target):
    with pytest.raises(UsageError, match=f"target {target} has no DLA"):
        plan(target, "fp16", "fp16", trt="10.3", dla_core=0)


def test_dla_refusals():
    with pytest.raises(UsageError, match="DLA core 2 does not exist on jetson-agx-orin"):
        plan("jetson-agx-orin", "fp16", trt="10.3", dla_core=2)
    with pytest.raises(UsageError, match="runs fp16 or int8, not fp32"):
        plan("jetson-agx-orin", "fp32", trt="10.3", dla_core=0)
    with pytest.raises(UsageError, match="cannot build for the DLA"):
        plan("jetson-agx-orin", "fp16", "fp16", trt="10.16", dla_core=0)
    dynamic = DynamicShape((1, 3, 256, 256), (1, 3, 360, 480), (2, 3, 720, 960))
    with pytest.raises(UsageError, match="static input shape"):
        plan("jetson-agx-orin", "fp16", "fp16", trt="10.3", dla_core=0, shape=dynamic)
    assert plan("jetson-xavier-nx", "int8", dla_core=1).calibrator == "entropy2"


def test_sparse_weights_only_on_ampere_and_newer():
    built = plan("jetson-orin-nano", "fp16", "fp16", trt="10.3", sparse_weights=True)
    assert built.builder_flags == ("SPARSE_WEIGHTS",)
    assert "--sparsity=enable" in built.to_trtexec("m.engine")
    assert "config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)" in built.to_api_calls()
    for xavier in ("jetson-xavier-nx", "jetson-agx-xavier"):
        with pytest.raises(UsageError, match=f"target {xavier} .* no sparse tensor cores"):
            plan(xavier, "fp16", sparse_weights=True)


def test_cpu_and_unread_cuda_targets_build_no_engine():
    with pytest.raises(UsageError, match="no TensorRT engine"):
        plan("cpu", "fp32")
    template = next(target for target in list_targets() if target.name == "cuda")
    with pytest.raises(UsageError, match="has not been read from a device"):
        plan_build(template, "m.onnx", options("fp16"))


# ---------------------------------------------------------------------------------------------------------------
# Workspace, shapes, caches; the renderings agree with the plan

def test_workspace_defaults_to_the_target_and_can_be_overridden():
    assert plan("jetson-orin-nano", "fp16", trt="10.3").workspace_mb == 1024
    assert plan("a100", "fp16").workspace_mb == 8192
    built = plan("a100", "fp16", "fp16", workspace_mb=512)
    assert built.workspace_mb == 512
    assert "--memPoolSize=workspace:512M" in built.to_trtexec("m.engine")
    assert "config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 512 << 20)" in built.to_api_calls()


def test_static_and_dynamic_shapes():
    default = plan("rtx-3090", "fp16", "fp16")
    assert default.min_shape == default.opt_shape == default.max_shape == (1, 3, 360, 480)
    static = plan("rtx-3090", "fp16", "fp16", shape=StaticShape(512, 1024, batch=2), input_name="input")
    assert parse_trtexec(static.to_trtexec("m.engine"))["--shapes"] == "input:2x3x512x1024"
    dynamic = plan("rtx-3090", "fp16", "fp16",
                   shape=DynamicShape((1, 3, 256, 256), (4, 3, 360, 480), (8, 3, 720, 960)))
    args = parse_trtexec(dynamic.to_trtexec("m.engine"))
    assert args["--minShapes"] == "pixel_values:1x3x256x256"
    assert args["--optShapes"] == "pixel_values:4x3x360x480"
    assert args["--maxShapes"] == "pixel_values:8x3x720x960"
    assert "--shapes" not in args
    assert ("profile.set_shape('pixel_values', (1, 3, 256, 256), (4, 3, 360, 480), (8, 3, 720, 960))"
            in dynamic.to_api_calls())
    assert_json_round_trip(dynamic)


def test_bad_shapes_and_options_are_refused():
    with pytest.raises(UsageError, match="grow from min to opt to max"):
        plan("rtx-3090", "fp16", shape=DynamicShape((1, 3, 512, 512), (1, 3, 360, 480), (1, 3, 720, 960)))
    with pytest.raises(UsageError, match="below 1"):
        plan("rtx-3090", "fp16", shape=StaticShape(0, 480))
    with pytest.raises(UsageError, match="between 0 and 5"):
        plan("rtx-3090", "fp16", builder_optimization_level=6)
    with pytest.raises(UsageError, match="precision 'int4'"):
        plan("rtx-3090", "int4")


def test_timing_cache_and_calibration_with_dynamic_shapes_in_the_api_calls():
    built = plan("jetson-agx-xavier", "int8", timing_cache="caches/xavier.timing",
                 shape=DynamicShape((1, 3, 360, 480), (1, 3, 360, 480), (2, 3, 360, 480)))
    assert parse_trtexec(built.to_trtexec("m.engine"))["--timingCacheFile"] == "caches/xavier.timing"
    calls = built.to_api_calls()
    assert "config.set_timing_cache(timing_cache, ignore_mismatch=False)" in calls
    assert "config.set_calibration_profile(profile)" in calls
    assert calls[-1].startswith("write 'caches/xavier.timing'")
    assert_trtexec_matches(built)


def test_plan_json_round_trip_keeps_every_field():
    built = plan("agx-orin", "int8", "qdq", trt="10.3", dla_core=0, sparse_weights=True)
    data = json.loads(json.dumps(built.to_dict()))
    assert data["target"] == "jetson-agx-orin" and data["resolved_from"] == "agx-orin"
    assert data["builder_flags"] == ["INT8", "GPU_FALLBACK", "SPARSE_WEIGHTS"]
    assert BuildPlan.from_dict(data) == built
