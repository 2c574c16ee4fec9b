"""core: the reference timestep grid (method notes section 2.5), seeded noise, DDPM noising versus the
reference's Euler path, prediction-type conversion, device and dtype choices."""
import os
import pytest
import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler

from dsd_nb.core import (DSDInputError, reference_timesteps, draw_noise, noise_scheduler, add_noise,
                         epsilon_from_prediction, resolve_device, resolve_dtype)


# ----------------------------------------------------------------------------- timestep grid

# (S, number of timesteps, first, second, last) from the table in dsd-method.md section 2.5
GRID_TABLE = [(10, 10, 89, 189, 989), (30, 30, 32, 65, 989), (40, 40, 14, 39, 989),
              (50, 49, 29, 49, 989), (200, 196, 14, 19, 989), (1000, 980, 10, 11, 989)]


@pytest.mark.parametrize("S,n,first,second,last", GRID_TABLE)
def test_grid_matches_method_table(S, n, first, second, last):
    t = reference_timesteps(S)
    assert t.dtype == torch.int64
    assert len(t) == n
    assert t[0].item() == first and t[1].item() == second and t[-1].item() == last
    assert torch.all(t[1:] > t[:-1]), "grid must be strictly ascending"


def test_grid_s10_exact():
    assert reference_timesteps(10).tolist() == list(range(89, 1000, 100))
    assert reference_timesteps().tolist() == list(range(89, 1000, 100))  # S=10 is the default


def test_grid_second_to_last_entries():
    assert reference_timesteps(30).tolist()[-2:] == [956, 989]
    assert reference_timesteps(40).tolist()[-2:] == [964, 989]
    assert reference_timesteps(50).tolist()[-2:] == [969, 989]
    assert reference_timesteps(200).tolist()[-2:] == [984, 989]
    assert reference_timesteps(1000).tolist() == list(range(10, 990))


def _closed_form(S, offset=10, T=1000):
    rate = T // S
    out, k = [], 0
    while offset + k * rate < T - offset:
        out.append((T - 1) - (offset + k * rate)); k += 1
    return sorted(out)


def test_grid_closed_form_every_S():
    "t_k = 999 - (10 + k * floor(1000 / S)) for all k with 10 + k * rate < 990, ascending, for every S."
    for S in range(1, 1001):
        assert reference_timesteps(S).tolist() == _closed_form(S), f"S={S}"


def test_grid_other_offset():
    assert reference_timesteps(10, offset=0).tolist() == _closed_form(10, offset=0)
    assert reference_timesteps(7, offset=33).tolist() == _closed_form(7, offset=33)


@pytest.mark.parametrize("bad", [0, -3, 1001, 2.5, "10", True, None])
def test_grid_rejects_bad_steps(bad):
    with pytest.raises(DSDInputError):
        reference_timesteps(bad)


# ----------------------------------------------------------------------------- noise

def test_draw_noise_seeded_and_shaped():
    a = draw_noise((3, 4, 8, 8), seed=7)
    b = draw_noise((3, 4, 8, 8), seed=7)
    c = draw_noise((3, 4, 8, 8), seed=8)
    assert a.shape == (3, 4, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # it is exactly what a fresh CPU generator with that seed gives
    assert torch.equal(a, torch.randn((3, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(7)))
    # the dtype only casts the fp32 draw
    assert torch.equal(draw_noise((3, 4, 8, 8), 7, dtype=torch.bfloat16), a.to(torch.bfloat16))
    # standard normal (loose statistical check on 12k numbers)
    big = draw_noise((3, 4, 32, 32), seed=0)
    assert abs(big.mean().item()) < 0.05 and abs(big.std().item() - 1) < 0.05


def test_draw_noise_prefix_consistency():
    "Noise for timestep k does not depend on the batch's other entries: a K-bank is the K first draws."
    assert torch.equal(draw_noise((5, 4, 8, 8), 3)[:2], draw_noise((2, 4, 8, 8), 3))


# ----------------------------------------------------------------------------- DDPM vs Euler noising

def test_noise_scheduler_is_ddpm_with_same_schedule(pipe):
    s = noise_scheduler(pipe.scheduler)
    assert isinstance(s, DDPMScheduler)
    assert s.config.num_train_timesteps == 1000 and s.config.prediction_type == "epsilon"
    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    assert torch.allclose(s.alphas_cumprod, ref.alphas_cumprod)
    assert noise_scheduler(pipe.scheduler.config).alphas_cumprod.equal(s.alphas_cumprod)  # config works too


@pytest.mark.parametrize("t", [10, 14, 89, 250, 500, 777, 989])
def test_ddpm_noising_equals_reference_euler_path(pipe, t):
    "Reference: Euler add_noise at Euler's float timestep, then scale_model_input (divide by sqrt(sigma^2 + 1))."
    g = torch.Generator().manual_seed(t)
    z0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    euler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)  # never set_timesteps: the reference's grid
    tf = euler.timesteps[euler.timesteps == float(t)]
    assert len(tf) == 1
    x_euler = euler.add_noise(z0, eps, tf.expand(2))
    x_euler = euler.scale_model_input(x_euler, tf[0])
    sigma = euler.sigmas[euler.index_for_timestep(tf[0])]
    assert torch.allclose(x_euler, (z0 + sigma * eps) / (sigma ** 2 + 1).sqrt(), atol=1e-6)  # what we compared
    x_ddpm = add_noise(noise_scheduler(pipe.scheduler), z0, eps, torch.full((2,), t, dtype=torch.long))
    assert torch.allclose(x_ddpm, x_euler, atol=1e-5, rtol=0), (x_ddpm - x_euler).abs().max()


def test_add_noise_formula_and_mixed_timesteps(pipe):
    s = noise_scheduler(pipe.scheduler)
    g = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500, 989])
    ab = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    x = add_noise(s, z0, eps, t)
    assert torch.allclose(x, ab.sqrt() * z0 + (1 - ab).sqrt() * eps, atol=1e-6)
    assert x.dtype == z0.dtype


# ----------------------------------------------------------------------------- prediction types

@pytest.fixture(scope="module")
def noisy():
    g = torch.Generator().manual_seed(5)
    z0, eps = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    return z0, eps, torch.tensor([14, 300, 650, 989])


def test_epsilon_prediction_is_identity(pipe, noisy):
    z0, eps, t = noisy
    s = noise_scheduler(pipe.scheduler)
    pred = torch.randn_like(z0)
    assert torch.equal(epsilon_from_prediction(s, pred, add_noise(s, z0, eps, t), t), pred)


def test_v_prediction_inverts_get_velocity(pipe, noisy):
    z0, eps, t = noisy
    s = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    v = s.get_velocity(z0, eps, t)
    x_t = s.add_noise(z0, eps, t)
    eps_hat = epsilon_from_prediction(s, v, x_t, t)
    assert torch.allclose(eps_hat, eps, atol=1e-5), (eps_hat - eps).abs().max()
    assert not torch.allclose(v, eps, atol=1e-2)  # the conversion is not a no-op


def test_sample_prediction_inverts_add_noise(pipe, noisy):
    z0, eps, t = noisy
    s = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type="sample")
    x_t = s.add_noise(z0, eps, t)
    assert torch.allclose(epsilon_from_prediction(s, z0, x_t, t), eps, atol=1e-4)


# ----------------------------------------------------------------------------- device and dtype

def test_resolve_dtype():
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype("fp32") == torch.float32 and resolve_dtype("bf16") == torch.bfloat16
    assert resolve_dtype(torch.bfloat16) == torch.bfloat16
    assert resolve_dtype(None, "cuda") == torch.float16 and resolve_dtype("fp16", "cuda") == torch.float16
    with pytest.raises(DSDInputError, match="fp16 is not supported on CPU"): resolve_dtype("fp16", "cpu")
    with pytest.raises(DSDInputError, match="fp16 is not supported on CPU"): resolve_dtype(torch.float16, "cpu")
    with pytest.raises(DSDInputError): resolve_dtype("fp64")
    with pytest.raises(DSDInputError): resolve_dtype(torch.float64)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    with pytest.raises(DSDInputError): resolve_device("nonsense-device")
    if not torch.cuda.is_available():
        with pytest.raises(DSDInputError, match="CUDA"): resolve_device("cuda")
        with pytest.raises(DSDInputError): resolve_device("cuda:1")


def test_dsd_input_error_is_value_error():
    assert issubclass(DSDInputError, ValueError)
