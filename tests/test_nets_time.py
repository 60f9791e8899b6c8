"""Time-conditioned networks: the sinusoidal embedding's values, and for TimeMLP and UNet the
shapes, the dependence on c, gradient flow to every parameter, and (UNet) no coupling across
the batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genmodels.nets import SinusoidalEmbedding, TimeMLP, UNet


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _assert_all_grads(module: nn.Module, loss: torch.Tensor) -> None:
    loss.backward()
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


# --- SinusoidalEmbedding ---------------------------------------------------------------------


def test_sinusoidal_shape_and_values() -> None:
    emb = SinusoidalEmbedding(16)
    assert _n_params(emb) == 0
    c = torch.tensor([0.0, 0.3, -2.0, 1000.0, 1e4])
    e = emb(c)
    assert e.shape == (5, 16)
    torch.testing.assert_close(e[0], torch.cat([torch.ones(8), torch.zeros(8)]))
    assert e.abs().max() <= 1.0 + 1e-6
    # ω_0 = 1: the first cos/sin pair is (cos c, sin c); the last frequency is P^(-(h-1)/h).
    torch.testing.assert_close(e[:, 0], torch.cos(c))
    torch.testing.assert_close(e[:, 8], torch.sin(c))
    torch.testing.assert_close(e[1, 7], torch.cos(torch.tensor(0.3 * 10000.0 ** (-7 / 8))))
    # different c, different embeddings
    d = torch.cdist(e, e) + torch.eye(5)
    assert d.min() > 1e-3


def test_sinusoidal_odd_dim_raises() -> None:
    with pytest.raises(ValueError, match="even"):
        SinusoidalEmbedding(7)


# --- TimeMLP ---------------------------------------------------------------------------------


def test_time_mlp_shape_dependence_and_grads() -> None:
    torch.manual_seed(0)
    net = TimeMLP(3, hidden=32, depth=2, emb_dim=16)
    x, c = torch.randn(5, 3), torch.randn(5)
    y = net(x, c)
    assert y.shape == (5, 3)
    assert TimeMLP(3, out_dim=2, hidden=8, depth=1, emb_dim=4)(x, c).shape == (5, 2)
    assert not torch.allclose(net(x, c + 1.0), y)
    _assert_all_grads(net, net(x, c).square().sum())


def test_time_mlp_zero_last() -> None:
    net = TimeMLP(3, hidden=8, depth=1, emb_dim=4, zero_last=True)
    assert torch.equal(net(torch.randn(4, 3), torch.randn(4)), torch.zeros(4, 3))


@pytest.mark.parametrize("conditioning", ["add", "film", "input"])
@pytest.mark.parametrize("fourier", [0, 3])
def test_time_mlp_conditionings_depend_on_c_and_get_gradients(conditioning: str, fourier: int) -> None:
    torch.manual_seed(0)
    net = TimeMLP(2, hidden=16, depth=2, emb_dim=8, conditioning=conditioning, fourier=fourier)
    x, c = torch.randn(6, 2), 10 * torch.rand(6)
    y = net(x, c)
    assert y.shape == (6, 2)
    assert not torch.allclose(net(x, c + 1.0), y)
    if conditioning == "film":  # the scales start at zero: no gradient through them yet is fine
        y = y + sum(lin.weight.sum() + lin.bias.sum() for lin in net.time_scale)
    _assert_all_grads(net, (y if conditioning == "film" else net(x, c)).square().sum())


def test_time_mlp_film_starts_as_the_additive_network_and_input_is_smaller() -> None:
    x, c = torch.randn(7, 2), 10 * torch.rand(7)
    torch.manual_seed(1)
    add = TimeMLP(2, hidden=16, depth=2, emb_dim=8)
    torch.manual_seed(1)
    film = TimeMLP(2, hidden=16, depth=2, emb_dim=8, conditioning="film")
    assert torch.allclose(film(x, c), add(x, c))
    n_add = sum(p.numel() for p in add.parameters())
    n_input = sum(
        p.numel() for p in TimeMLP(2, hidden=16, depth=2, emb_dim=8, conditioning="input").parameters()
    )
    # input: (2 + 8)·16 + 16 + 16·16 + 16 + 16·2 + 2, no embedding MLP and no projections
    assert n_input == (2 + 8) * 16 + 16 + 16 * 16 + 16 + 16 * 2 + 2 < n_add


def test_time_mlp_fourier_features_feed_sin_cos_of_each_octave() -> None:
    # the first layer sees [x, sin(2^k π x), cos(2^k π x)]: x = 0 and x = 2 (one period of
    # every octave) differ only through x itself, so zeroing x's column makes them equal
    net = TimeMLP(1, hidden=8, depth=1, emb_dim=4, fourier=4)
    assert net.layers[0].in_features == 1 * (1 + 2 * 4)
    with torch.no_grad():
        net.layers[0].weight[:, 0] = 0.0
    c = torch.zeros(2)
    y = net(torch.tensor([[0.0], [2.0]]), c)
    torch.testing.assert_close(y[0], y[1], atol=1e-5, rtol=0)
    assert not torch.allclose(net(torch.tensor([[0.0], [0.5]]), c)[1], y[0])  # half a period
    with pytest.raises(ValueError, match="fourier"):
        TimeMLP(1, fourier=-1)
    with pytest.raises(ValueError, match="conditioning"):
        TimeMLP(1, conditioning="concat")


# --- UNet ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unet() -> UNet:
    torch.manual_seed(0)
    return UNet(base=16, emb_dim=16, groups=4, image_shape=(1, 8, 8)).eval()


def test_unet_shapes(unet: UNet) -> None:
    x, c = torch.randn(3, 1, 8, 8), torch.randn(3)
    assert unet(x, c).shape == (3, 1, 8, 8)
    flat = unet(x.reshape(3, 64), c)
    assert flat.shape == (3, 64)
    torch.testing.assert_close(flat, unet(x, c).reshape(3, 64))
    assert unet(torch.randn(2, 1, 4, 6), torch.randn(2)).shape == (2, 1, 4, 6)
    rgb = UNet(channels=3, base=8, mults=(1, 2, 2), emb_dim=8, groups=4)
    assert rgb(torch.randn(2, 3, 8, 12), torch.randn(2)).shape == (2, 3, 8, 12)


def test_unet_depends_on_c(unet: UNet) -> None:
    x, c = torch.randn(3, 1, 8, 8), torch.randn(3)
    with torch.no_grad():
        assert not torch.allclose(unet(x, c), unet(x, c + 1.0))


def test_unet_all_params_get_gradients() -> None:
    torch.manual_seed(1)
    net = UNet(base=8, emb_dim=8, groups=4)
    x, c = torch.randn(2, 1, 8, 8), torch.randn(2)
    _assert_all_grads(net, net(x, c).square().sum())


def test_unet_bad_shapes_raise(unet: UNet) -> None:
    with pytest.raises(ValueError, match=r"\(2, 1, 7, 8\)"):
        unet(torch.randn(2, 1, 7, 8), torch.randn(2))
    with pytest.raises(ValueError, match=r"\(2, 63\)"):
        unet(torch.randn(2, 63), torch.randn(2))
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\)"):
        unet(torch.randn(2, 3, 8, 8), torch.randn(2))
    with pytest.raises(ValueError, match="image_shape"):
        UNet(base=8, groups=4)(torch.randn(2, 64), torch.randn(2))
    with pytest.raises(ValueError, match="divisible"):
        UNet(base=8, groups=4, image_shape=(1, 7, 7))


def test_unet_default_is_small() -> None:
    assert _n_params(UNet()) < 1_000_000
    assert _n_params(UNet(image_shape=(1, 8, 8))) == _n_params(UNet())


def test_unet_deterministic_and_no_batch_coupling(unet: UNet) -> None:
    x, c = torch.randn(4, 1, 8, 8), torch.randn(4)
    with torch.no_grad():
        y = unet(x, c)
        assert torch.equal(unet(x, c), y)
        for i in range(4):
            torch.testing.assert_close(unet(x[i : i + 1], c[i : i + 1]), y[i : i + 1], atol=1e-5, rtol=1e-5)


def test_scalar_condition_broadcasts() -> None:
    net = TimeMLP(2, hidden=8, depth=1, emb_dim=4)
    x = torch.randn(3, 2)
    torch.testing.assert_close(net(x, 0.5), net(x, torch.full((3,), 0.5)))
    with pytest.raises(ValueError, match="batch size 3"):
        net(x, torch.zeros(2))
