"""from_torch / to_torch: layout, round trips, state_dicts, and every refusal naming its layer."""

import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bp_jax
from bp_jax import documents

torch = pytest.importorskip("torch", reason="torch interop needs PyTorch: pip install 'bp_jax[torch]'")
nn = torch.nn


def seed_mlp():
    return nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 1))


SEED_MODEL = documents.seed_mlp()


def test_from_torch_keeps_pytorchs_layout_and_values():
    torch.manual_seed(0)
    module = seed_mlp()
    params = bp_jax.from_torch(module, SEED_MODEL)
    assert jax.tree.map(jnp.shape, params) == ({"weight": (5, 10), "bias": (5,)}, {}, {"weight": (1, 5), "bias": (1,)})
    np.testing.assert_array_equal(params[0]["weight"], module[0].weight.detach().numpy())
    np.testing.assert_array_equal(params[2]["bias"], module[2].bias.detach().numpy())
    x = torch.randn(7, 10)
    np.testing.assert_allclose(
        SEED_MODEL.apply(params, jnp.asarray(x.numpy())), module(x).detach().numpy(), rtol=1e-6, atol=1e-6
    )


def test_from_torch_copies_so_later_torch_updates_do_not_leak_in():
    module = nn.Sequential(nn.Linear(512, 512))
    params = bp_jax.from_torch(module)
    before = np.array(params[0]["weight"])
    with torch.no_grad():
        module[0].weight.add_(1.0)
    np.testing.assert_array_equal(params[0]["weight"], before)


def test_nested_sequential_and_single_layers_map_one_to_one():
    module = nn.Sequential(nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh()), nn.Sigmoid())
    model = bp_jax.Sequential(bp_jax.Sequential(bp_jax.Linear(3, 4, bias=False), bp_jax.Tanh()), bp_jax.Sigmoid())
    params = bp_jax.from_torch(module, model)
    assert jax.tree.map(jnp.shape, params) == (({"weight": (4, 3)}, {}), {})
    assert jax.tree.map(jnp.shape, bp_jax.from_torch(nn.Linear(3, 2), bp_jax.Linear(3, 2))) == {
        "weight": (2, 3),
        "bias": (2,),
    }
    assert bp_jax.from_torch(nn.ReLU(), bp_jax.ReLU()) == {}


@pytest.mark.parametrize("seed", [0, 1])
def test_round_trip_through_a_fresh_module_is_exact(seed):
    torch.manual_seed(seed)
    source, target = seed_mlp(), seed_mlp()
    assert bp_jax.to_torch(bp_jax.from_torch(source), target) is target
    for a, b in zip(source.parameters(), target.parameters()):
        assert torch.equal(a, b)
    params = SEED_MODEL.init(jax.random.key(seed))
    chex.assert_trees_all_equal(bp_jax.from_torch(bp_jax.to_torch(params, target)), params)


def test_to_torch_keeps_the_modules_dtype_and_leaves_grads_alone():
    with jax.enable_x64(True):
        params = SEED_MODEL.init(jax.random.key(0))
    module = seed_mlp()
    module(torch.randn(2, 10)).sum().backward()
    grad_before = module[0].weight.grad.clone()
    bp_jax.to_torch(params, module)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in module.parameters())
    assert torch.equal(module[0].weight.grad, grad_before)
    np.testing.assert_allclose(module[0].weight.detach().numpy(), np.asarray(params[0]["weight"]), rtol=1e-7)


def test_float64_stays_float64_under_x64():
    module = seed_mlp().double()
    with jax.enable_x64(True):
        params = bp_jax.from_torch(module)
        assert params[0]["weight"].dtype == jnp.float64
        np.testing.assert_array_equal(params[0]["weight"], module[0].weight.detach().numpy())


def test_bfloat16_modules_and_params_round_trip_bit_for_bit():
    torch.manual_seed(2)
    module = seed_mlp().to(torch.bfloat16)
    params = bp_jax.from_torch(module, SEED_MODEL)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    np.testing.assert_array_equal(
        np.asarray(params[0]["weight"], np.float32), module[0].weight.detach().float().numpy()
    )
    state_dict_params = bp_jax.from_torch(module.state_dict(), SEED_MODEL)
    chex.assert_trees_all_equal(state_dict_params, params)
    into_bfloat16, into_float32 = seed_mlp().to(torch.bfloat16), seed_mlp()
    bp_jax.to_torch(params, into_bfloat16)
    bp_jax.to_torch(params, into_float32)
    for source, same, wider in zip(module.parameters(), into_bfloat16.parameters(), into_float32.parameters()):
        assert same.dtype == torch.bfloat16 and torch.equal(same, source)
        assert wider.dtype == torch.float32 and torch.equal(wider, source.float())


def test_state_dict_with_the_model_fills_parameter_free_layers():
    module = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2), nn.Sigmoid())
    model = bp_jax.Sequential(bp_jax.Linear(4, 3), bp_jax.Tanh(), bp_jax.Linear(3, 2), bp_jax.Sigmoid())
    from_state = bp_jax.from_torch(module.state_dict(), model)
    chex.assert_trees_all_equal(from_state, bp_jax.from_torch(module, model))
    assert from_state[3] == {}


def test_state_dict_without_the_model_stops_at_the_last_parameter_layer():
    module = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2), nn.Sigmoid())
    params = bp_jax.from_torch(module.state_dict())
    assert len(params) == 3 and params[1] == {}
    chex.assert_trees_all_equal(params, bp_jax.from_torch(module)[:3])


@pytest.mark.parametrize("layer", [nn.Conv2d(1, 1, 3), nn.ELU(), nn.GELU()])
def test_unsupported_layers_are_named_with_their_index(layer):
    module = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), layer)
    name = type(layer).__name__
    with pytest.raises(TypeError, match=rf"layer 2 is {name}, which bp_jax has no layer for"):
        bp_jax.from_torch(module)
    with pytest.raises(TypeError, match=rf"layer 2 \({name}\): bp_jax has no layer for it"):
        bp_jax.to_torch(({"weight": jnp.zeros((4, 4)), "bias": jnp.zeros(4)}, {}, {}), module)


def test_unsupported_layer_inside_a_nested_sequential_is_named_by_its_path():
    with pytest.raises(TypeError, match=r"layer 1\.0 is LayerNorm"):
        bp_jax.from_torch(nn.Sequential(nn.ReLU(), nn.Sequential(nn.LayerNorm(3))))


def test_from_torch_checks_every_layer_against_the_model():
    wide = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 1))
    with pytest.raises(ValueError, match=r"layer 0: torch gives params of shapes .*\(6, 10\).*expects .*\(5, 10\)"):
        bp_jax.from_torch(wide, SEED_MODEL)
    no_bias = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 1, bias=False))
    with pytest.raises(ValueError, match="layer 2: torch gives"):
        bp_jax.from_torch(no_bias, SEED_MODEL)
    with pytest.raises(ValueError, match="torch gives 2 layers but the model has 3"):
        bp_jax.from_torch(nn.Sequential(nn.Linear(10, 5), nn.ReLU()), SEED_MODEL)
    with pytest.raises(ValueError, match="layer 2: torch gives"):
        bp_jax.from_torch(seed_mlp().state_dict() | {"2.weight": torch.zeros(1, 4)}, SEED_MODEL)
    with pytest.raises(ValueError, match="state_dict has layer 3 but the model has 3 layers"):
        bp_jax.from_torch(seed_mlp().state_dict() | {"3.weight": torch.zeros(1, 1)}, SEED_MODEL)


def test_another_activation_is_refused_both_ways():
    tanh_module = nn.Sequential(nn.Linear(10, 5), nn.Tanh(), nn.Linear(5, 1))
    message = (
        r"the torch module is Sequential\(Linear\(10, 5\), Tanh\(\), Linear\(5, 1\)\) but the model is "
        r"Sequential\(Linear\(10, 5\), ReLU\(\), Linear\(5, 1\)\): they compute different functions"
    )
    with pytest.raises(ValueError, match=message):
        bp_jax.from_torch(tanh_module, SEED_MODEL)
    params = SEED_MODEL.init(jax.random.key(0))
    before = [tensor.clone() for tensor in tanh_module.parameters()]
    with pytest.raises(ValueError, match=message):
        bp_jax.to_torch(params, tanh_module, SEED_MODEL)
    assert all(torch.equal(a, b) for a, b in zip(before, tanh_module.parameters()))  # nothing written
    same = bp_jax.to_torch(params, seed_mlp(), SEED_MODEL)  # the same layers are accepted
    chex.assert_trees_all_equal(bp_jax.from_torch(same, SEED_MODEL), params)


def test_a_state_dict_of_numpy_arrays_is_accepted():
    module = seed_mlp()
    as_numpy = {key: tensor.detach().numpy() for key, tensor in module.state_dict().items()}
    chex.assert_trees_all_equal(bp_jax.from_torch(as_numpy, SEED_MODEL), bp_jax.from_torch(module, SEED_MODEL))


@pytest.mark.parametrize("key", ["fc1.weight", "0.running_mean", "0.0.weight"])
def test_state_dict_keys_of_other_modules_are_refused(key):
    with pytest.raises(ValueError, match=rf"state_dict key '{key}' is not '<layer index>.weight'"):
        bp_jax.from_torch({key: torch.zeros(2, 2)})


def test_from_torch_refuses_other_inputs():
    with pytest.raises(TypeError, match=r"expects an nn\.Module or a state_dict, got list"):
        bp_jax.from_torch([torch.zeros(2)])
    with pytest.raises(TypeError, match=r"needs a bp_jax\.Sequential model"):
        bp_jax.from_torch({"0.weight": torch.zeros(1, 1)}, bp_jax.Linear(1, 1))


def test_to_torch_names_the_layer_and_both_shapes_and_writes_nothing():
    module = seed_mlp()
    before = [p.clone() for p in module.parameters()]
    params = list(SEED_MODEL.init(jax.random.key(0)))
    params[2] = {"weight": jnp.zeros((2, 5)), "bias": jnp.zeros(1)}
    with pytest.raises(ValueError, match=r"layer 2 \(Linear\) weight: module has shape \(1, 5\), params have \(2, 5\)"):
        bp_jax.to_torch(tuple(params), module)
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))  # layer 0 untouched too


def test_to_torch_refuses_params_of_another_structure():
    module = seed_mlp()
    params = SEED_MODEL.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"layer \(top\) \(Sequential\) has 3 layers but params has 2 entries"):
        bp_jax.to_torch(params[:2], module)
    with pytest.raises(
        ValueError,
        match=r"layer 0 \(Linear\) expects params with keys \['bias', 'weight'\], "
        r"got \['weight'\]",
    ):
        bp_jax.to_torch(({"weight": params[0]["weight"]}, *params[1:]), module)
    with pytest.raises(ValueError, match=r"layer 1 \(ReLU\) expects params with keys \[\]"):
        bp_jax.to_torch((params[0], params[0], params[2]), module)


@pytest.mark.slow
def test_import_bp_jax_does_not_import_torch_but_from_torch_does():
    code = (
        "import sys, bp_jax; before = 'torch' in sys.modules; bp_jax.from_torch; "
        "print(before, 'torch' in sys.modules, 'from_torch' in bp_jax.__all__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True"]


def test_without_torch_star_import_works_and_from_torch_says_what_to_install():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from bp_jax import *\n"
        "import bp_jax\n"
        "try:\n    bp_jax.from_torch\nexcept ImportError as err:\n    print(err)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "bp_jax.from_torch and bp_jax.to_torch need PyTorch: pip install 'bp_jax[torch]'"
