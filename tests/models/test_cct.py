import torch

from pocketlearn.evaluate import evaluate
from pocketlearn.models import CCT, CCTConfig, build_model


def test_cct_maps_images_to_logits_with_as_few_parameters_as_the_cnn():
    model = build_model("cct")
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) <= 1.01 * sum(p.numel() for p in build_model("cnn").parameters())


def test_cct_learns_digits(digits):
    x, y, xt, yt = digits
    images, test_images = x.view(-1, 1, 8, 8), xt.view(-1, 1, 8, 8)
    model = CCT(CCTConfig(conv_layers=1, dim=32, blocks=1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for idx in torch.randperm(len(images), generator=g).split(32):
            loss = torch.nn.functional.cross_entropy(model(images[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert evaluate(model, [(test_images, yt)])["accuracy"] > 0.85
