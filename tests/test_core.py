"""core, many-case checks: the reference timestep grid (method notes section 2.5) for every S and bad input, and DDPM
noising versus the reference's Euler path at many timesteps. Single cases (noise, prediction types, devices, dtypes)
live in 00_core."""
import pytest
import torch
from diffusers import EulerDiscreteScheduler

from dsd_nb.core import DSDInputError, reference_timesteps, noise_scheduler, add_noise


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


# ----------------------------------------------------------------------------- DDPM vs Euler noising

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
