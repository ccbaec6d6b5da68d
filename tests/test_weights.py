import http.server
import os
import subprocess
import sys
import threading

import pytest
import torch

from edgeseg.checkpoint import save_checkpoint
from edgeseg.data.palettes import CAMVID, CITYSCAPES
from edgeseg.errors import WeightsError
from edgeseg.zoo.weights import load_model, replace_head


def test_random_is_explicit_and_default_without_bundle_is_an_error():
    assert load_model("fcn-resnet18", "random").source == "random"
    with pytest.raises(WeightsError, match="has no bundled weights"):
        load_model("segformer-b5")


def test_edgeseg_checkpoint_round_trip(tmp_path):
    original = load_model("fcn-resnet18", "random")
    path = save_checkpoint(original.model, tmp_path / "ckpt.safetensors", model_name="fcn-resnet18",
                           preprocessing=original.preprocessing, label_set="camvid", half=True)
    loaded = load_model("fcn-resnet18", str(path), label_set=CAMVID)
    assert loaded.preprocessing == original.preprocessing
    for key, value in original.model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(loaded.model.state_dict()[key], value.half().float())


def test_checkpoint_of_another_model_is_refused(tmp_path):
    original = load_model("fcn-resnet18", "random")
    path = save_checkpoint(original.model, tmp_path / "c.safetensors", model_name="fcn-resnet18",
                           preprocessing=original.preprocessing, label_set="camvid")
    with pytest.raises(WeightsError, match="is a fcn-resnet18 checkpoint, not unet-resnet18"):
        load_model("unet-resnet18", str(path))


def test_plain_pth_state_dict_loads_with_weights_only(tmp_path):
    model = load_model("fcn-resnet18", "random").model
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pth")
    loaded = load_model("fcn-resnet18", str(tmp_path / "w.pth"))
    torch.testing.assert_close(loaded.model.state_dict()["score8.weight"], model.state_dict()["score8.weight"])


def test_pickled_module_is_refused(tmp_path):
    torch.save(load_model("lraspp-mobilenetv3", "random").model, tmp_path / "module.pt")
    with pytest.raises(WeightsError, match="not loaded for safety"):
        load_model("lraspp-mobilenetv3", str(tmp_path / "module.pt"))


def test_wrong_class_count_names_the_problem(tmp_path):
    model = load_model("fcn-resnet18", "random", label_set=CITYSCAPES).model  # 19 classes
    torch.save(model.state_dict(), tmp_path / "city.pth")
    with pytest.raises(WeightsError, match="predict 19 classes but camvid has 11"):
        load_model("fcn-resnet18", str(tmp_path / "city.pth"), label_set=CAMVID)


def test_other_variant_names_the_mismatched_layer(tmp_path):
    torch.save(load_model("unet-resnet18", "random").model.state_dict(), tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match=r"layer model\.encoder\.layer1\.0\.conv1\.weight|does not fit"):
        load_model("unet-resnet34", str(tmp_path / "r18.pth"))


def test_hugging_face_directory_loads_with_its_classes(tmp_path):
    from transformers import SegformerForSemanticSegmentation

    from edgeseg.zoo.segformer import segformer_config

    config = segformer_config("b0", 19)
    config.id2label = {i: name for i, name in enumerate(CITYSCAPES.classes)}
    config.label2id = {name: i for i, name in config.id2label.items()}
    hf_model = SegformerForSemanticSegmentation(config)
    hf_model.save_pretrained(tmp_path / "hf")
    loaded = load_model("segformer-b0", str(tmp_path / "hf"))
    assert loaded.preprocessing.classes == CITYSCAPES.classes
    assert loaded.preprocessing.palette == CITYSCAPES.palette
    pixels = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        expected = hf_model.eval()(pixel_values=pixels).logits
        ours = loaded.model(pixels)
    expected = torch.nn.functional.interpolate(expected, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours, expected)


class _NotFoundHub(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "Repository not found"}')

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


def test_unreachable_hub_id_is_one_clear_line(tmp_path, tiny_camvid):
    """The real huggingface_hub client talks to a loopback 'hub' that knows no repository."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFoundHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}", HF_HOME=str(tmp_path),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="5")
    result = subprocess.run([sys.executable, "-m", "edgeseg", "eval", "--model", "segformer-b0",
                             "--weights", "nvidia/no-such-model", "--data-root", str(tiny_camvid), "--limit", "1"],
                            env=env, capture_output=True, text=True, timeout=120)
    server.shutdown()
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot download nvidia/no-such-model" in lines[0]


def test_new_head_keeps_the_body_and_starts_the_classifier_afresh(tmp_path):
    city = load_model("fcn-resnet18", "random", label_set=CITYSCAPES).model  # 19 classes
    torch.save(city.state_dict(), tmp_path / "city.pth")
    loaded = load_model("fcn-resnet18", str(tmp_path / "city.pth"), label_set=CAMVID, new_head=True)
    head = loaded.new_head
    assert (head["from_classes"], head["to_classes"], head["label_set"]) == (19, 11, "camvid")
    # FCN-8s: the stride-32 head's classifier and the two skip scorers depend on the class count, nothing else
    assert head["reinitialised"] == ["head32.4.bias", "head32.4.weight", "score16.bias", "score16.weight",
                                     "score8.bias", "score8.weight"]
    state, city_state = loaded.model.state_dict(), city.state_dict()
    for key in state:
        if key not in head["reinitialised"]:
            torch.testing.assert_close(state[key], city_state[key])
    assert state[head["reinitialised"][0]].shape[0] == 11
    assert loaded.preprocessing.classes == CAMVID.classes and loaded.preprocessing.palette == CAMVID.palette
    assert loaded.input_record()["new_head"] == head  # manifests and train recipes say what was replaced
    with torch.inference_mode():
        assert loaded.model(torch.randn(1, 3, 64, 64)).shape == (1, 11, 64, 64)


def test_new_head_on_a_hugging_face_segformer(tmp_path):
    from transformers import SegformerForSemanticSegmentation

    from edgeseg.zoo.segformer import segformer_config

    SegformerForSemanticSegmentation(segformer_config("b0", 19)).save_pretrained(tmp_path / "hf")
    loaded = load_model("segformer-b0", str(tmp_path / "hf"), label_set=CAMVID, new_head=True)
    # only the last 1x1 convolution depends on the class count; the encoder and the MLP decoder are kept
    assert [key.rsplit(".", 1)[-1] for key in loaded.new_head["reinitialised"]] == ["bias", "weight"]
    assert all("decode_head.classifier" in key for key in loaded.new_head["reinitialised"])


def test_same_class_count_needs_no_new_head(tmp_path):
    torch.save(load_model("fcn-resnet18", "random").model.state_dict(), tmp_path / "camvid.pth")
    assert load_model("fcn-resnet18", str(tmp_path / "camvid.pth"), label_set=CAMVID, new_head=True).new_head is None


def test_new_head_refuses_another_variant():
    b1 = load_model("segformer-b1", "random", label_set=CITYSCAPES)  # same layer names as b0, wider layers
    with pytest.raises(WeightsError, match="belong to another variant"):
        replace_head(b1, "segformer-b0", CAMVID)


def test_encoder_only_segformer_is_refused_for_eval_and_fine_tunes_with_new_head(tmp_path):
    from transformers import SegformerForImageClassification

    from edgeseg.zoo.segformer import segformer_config

    encoder_only = SegformerForImageClassification(segformer_config("b0", 11))  # like nvidia/mit-b0, no decoder
    encoder_only.save_pretrained(tmp_path / "mit")
    with pytest.raises(WeightsError, match=r"no values for \d+ layers \(first: decode_head\..*--new-head"):
        load_model("segformer-b0", str(tmp_path / "mit"), label_set=CAMVID)
    loaded = load_model("segformer-b0", str(tmp_path / "mit"), label_set=CAMVID, new_head=True)
    assert "decode_head.linear_fuse.weight" in loaded.new_head["not_in_weights"]
    assert not any(key.startswith("segformer.") for key in loaded.new_head["not_in_weights"])
    ours = loaded.model.state_dict()
    theirs = encoder_only.state_dict()
    key = "segformer.stages.0.patch_embeddings.proj.weight"
    torch.testing.assert_close(ours[f"model.{key}"], theirs[key])  # the encoder came from the checkpoint


def test_bundled_weights_are_recorded_by_their_place_in_the_package():
    from edgeseg.zoo.weights import bundled_weights

    if bundled_weights("segformer-b0") is None:
        pytest.skip("no bundled segformer-b0 checkpoint")
    record = load_model("segformer-b0").input_record()
    assert record["path"] == "edgeseg/weights/segformer-b0.safetensors"  # not this machine's absolute path
    assert len(record["sha256"]) == 64 and record["bytes"] > 1e6
