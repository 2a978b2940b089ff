import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketlearn.errors import DataError
from pocketlearn.models import build_model, get_model_spec
from pocketlearn.models import efficientnet as en
from pocketlearn.models.efficientnet import efficientnet_lite0, same_padding


def sample_photo(name: str, side: int = 224) -> torch.Tensor:
    """One of scikit-image's sample photos (shipped in its wheel) as a (1, 3, side, side) batch in [0, 1]."""
    from PIL import Image

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-image's sample photos are not installed (make test installs them)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / f"{name}.png"
    image = Image.open(path).convert("RGB").resize((side, side), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def imagenet_model():
    return efficientnet_lite0(num_classes=1000).eval()


@pytest.mark.parametrize(("photo", "classes"), [("chelsea", range(281, 288)), ("coffee", (967, 968))])
def test_the_imagenet_weights_recognise_real_photos(imagenet_model, photo, classes):
    """A cat is a cat (ImageNet 281-287) and an espresso an espresso or a cup (967-968): weights and padding right."""
    with torch.no_grad():
        probabilities = imagenet_model(sample_photo(photo)).softmax(1)[0]
    assert int(probabilities.argmax()) in classes
    assert float(probabilities[list(classes)].sum()) > 0.5


def test_tensorflow_same_padding_puts_the_odd_pixel_after():
    assert same_padding(224, 3, 2) == (0, 1)
    assert same_padding(225, 3, 2) == (1, 1)
    assert same_padding(112, 5, 1) == (2, 2)
    assert same_padding(7, 5, 2) == (2, 2)


def test_a_new_head_starts_at_zero_and_the_backbone_is_imagenets():
    model = build_model("efficientnet-lite0")
    assert model._fc.out_features == 10 and not model._fc.weight.any()
    imagenet = efficientnet_lite0(num_classes=1000)
    assert torch.equal(model._conv_stem.weight, imagenet._conv_stem.weight)
    assert get_model_spec("efficientnet-lite0").input_shape == (3, 224, 224)


def test_grayscale_images_of_any_size_are_prepared_as_the_weights_expect():
    model = efficientnet_lite0(num_classes=10, image_size=96).eval()
    gray = torch.rand(2, 1, 28, 28)
    prepared = model.prepare(gray)
    assert prepared.shape == (2, 3, 96, 96) and prepared.min() >= -1 and prepared.max() <= 1
    assert model(gray).shape == (2, 10)


def test_missing_weights_name_the_package_to_install(monkeypatch):
    monkeypatch.setattr(en, "WEIGHTS_PACKAGE", "no_such_weights_package")
    with pytest.raises(DataError, match=r"pocketlearn\[vision\]"):
        efficientnet_lite0()


def test_weights_that_do_not_fit_are_a_data_error(monkeypatch, tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"_conv_stem.weight": torch.zeros(1)}, bad)
    monkeypatch.setattr(en, "weights_path", lambda: bad)
    with pytest.raises(DataError, match="do not fit|cannot read"):
        efficientnet_lite0()


def test_an_image_size_is_for_models_that_resize_their_inputs():
    from pocketlearn.errors import ConfigError

    assert build_model("efficientnet-lite0", image_size=96).image_size == 96
    with pytest.raises(ConfigError, match="takes its inputs at one size.*efficientnet-lite0"):
        build_model("digits-mlp", image_size=96)
    with pytest.raises(ConfigError, match="too small"):
        build_model("efficientnet-lite0", image_size=8)
    assert get_model_spec("efficientnet-lite0").at_image_size(128).example_batch(2)[0].shape == (2, 3, 128, 128)
    with pytest.raises(ConfigError, match="does not take images"):
        get_model_spec("digits-mlp").at_image_size(128)
