import pytest
import torch

from edgeseg.errors import UsageError
from edgeseg.zoo import create_model, get_entry, list_models
from edgeseg.zoo.stats import count_params_and_gflops

REQUIRED = {"segformer-b0", "segformer-b1", "segformer-b2", "segformer-b3", "segformer-b4", "segformer-b5",
            "deeplabv3-mobilenetv3", "deeplabv3-resnet50", "fcn-resnet50", "lraspp-mobilenetv3", "unet-resnet18",
            "unet-resnet34", "deeplabv3plus-resnet50", "deeplabv3plus-mobilenetv2", "fcn-resnet18"}


def test_zoo_has_every_required_model():
    assert REQUIRED <= {entry.name for entry in list_models()}


@pytest.mark.parametrize("name", sorted(REQUIRED | {"unet-mobilenetv2"}))
def test_every_model_maps_input_to_logits_at_input_size(name):
    # The meta device checks shapes of even the largest models without allocating memory.
    with torch.device("meta"):
        model = create_model(name, num_classes=11).eval()
        logits = model(torch.empty(1, 3, 360, 480))
    assert tuple(logits.shape) == (1, 11, 360, 480)


def test_light_models_run_for_real_on_odd_sizes():
    torch.manual_seed(0)
    for name in ("fcn-resnet18", "unet-resnet18", "segformer-b0"):
        model = create_model(name, num_classes=5).eval()
        with torch.inference_mode():
            logits = model(torch.randn(1, 3, 100, 130))  # not a multiple of 32: padded inside, cropped back
        assert tuple(logits.shape) == (1, 5, 100, 130)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name, padded_height", [("deeplabv3plus-mobilenetv2", 368), ("unet-resnet18", 384)])
def test_smp_models_are_padded_to_their_own_stride_only(name, padded_height):
    """DeepLabV3+'s encoder stops at stride 16, U-Net's at 32: 360 rows become 368 for one and 384 for the other
    (padding to 32 for both cost DeepLabV3+ 4% more work on every backend for nothing)."""
    seen = []
    with torch.device("meta"):
        model = create_model(name, num_classes=11).eval()
        model.model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
        logits = model(torch.empty(1, 3, 360, 480))
    assert seen == [(1, 3, padded_height, 480)] and tuple(logits.shape) == (1, 11, 360, 480)


def test_contract_travels_with_the_entry():
    contract = get_entry("segformer-b0").preprocessing()
    assert contract.input_size == (360, 480)
    assert contract.channel_order == "RGB"
    assert contract.classes[0] == "Sky" and len(contract.palette) == contract.num_classes == 11


def test_unknown_model_suggests_close_names():
    with pytest.raises(UsageError, match="did you mean .*segformer-b0"):
        get_entry("segformer-bo")


def test_param_and_flop_counts_match_known_values():
    with torch.device("meta"):
        model = create_model("segformer-b0", num_classes=150)
    params, gmacs = count_params_and_gflops(model, (512, 512))
    assert params / 1e6 == pytest.approx(3.75, abs=0.1)  # SegFormer paper: 3.8M params for B0 on ADE20K
    assert 7.0 < gmacs < 9.0  # paper: 8.4 GFLOPs (multiply-accumulates) at 512x512


@pytest.mark.parametrize("name", sorted(entry.name for entry in list_models()))
def test_classifier_names_exactly_the_layers_that_depend_on_the_class_count(name):
    """ModelEntry.classifier is the one statement of what a new label set replaces and what pruning and 2:4
    sparsity leave alone: it must be every layer whose shape follows num_classes, and nothing else."""
    with torch.device("meta"):
        seven, five = create_model(name, num_classes=7).state_dict(), create_model(name, num_classes=5).state_dict()
    depends = {key.rsplit(".", 1)[0] for key in seven if seven[key].shape != five[key].shape}
    assert depends == set(get_entry(name).classifier)
