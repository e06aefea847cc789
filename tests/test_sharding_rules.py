"""Sharding stated once: the config's axis rules place batches, activations and weights.

One subprocess on 8 fake CPU devices trains test_train's small model (synthetic_tiny, narrowed) for
two steps on several meshes, each against the same steps on one device: tensor parallelism, FSDP
and all three axes; it also lowers the step under a batch rule of ("fsdp",) alone. In-process
tests cover the rule lookups, the activation constraints (on an abstract mesh), CLIP's weight
shardings and the device order of make_mesh.
"""
import json
import os
import pathlib
import subprocess
import sys
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from upgpt_jax import sharding
from upgpt_jax.config_base import DEFAULT_AXIS_RULES
from upgpt_jax.sharding import (activation_sharding, batch_axes, batch_shards, constrain, device_grid, make_mesh,
                                weight_shardings)

REPO = pathlib.Path(__file__).resolve().parents[1]


def rules_with(**changes):
    return tuple((name, changes.get(name, axes)) for name, axes in DEFAULT_AXIS_RULES)


def test_batch_axes_come_from_the_batch_rule():
    assert batch_axes(DEFAULT_AXIS_RULES) == ("data", "fsdp")
    assert batch_axes(rules_with(batch=("data",))) == ("data",)
    assert batch_axes(rules_with(batch="fsdp")) == ("fsdp",)
    assert batch_axes(rules_with(batch=None)) == ()
    assert batch_axes([["batch", ["fsdp", "data"]]]) == ("fsdp", "data")  # as JSON gives rules back


def constraints(function, *args):
    """The shardings of the sharding constraints in `function`'s jaxpr."""
    jaxpr = jax.make_jaxpr(function)(*args)
    return [str(equation.params["sharding"].spec) for equation in jaxpr.eqns
            if equation.primitive.name == "sharding_constraint"]


def test_activation_constraints_follow_the_rules_inside_activation_sharding_only():
    x = np.ones((4, 6, 2, 8), np.float32)
    image = ("batch", "activation_height", "activation_width", "activation_embed")
    heads = ("batch", "activation_length", "activation_heads", "activation_kv")
    assert constraints(lambda v: constrain(v, image), x) == []
    mesh = jax.sharding.AbstractMesh((2, 2, 2), ("data", "fsdp", "tensor"))  # shapes only: no devices needed
    with activation_sharding(mesh, DEFAULT_AXIS_RULES):
        batch = ("data", "fsdp")
        assert constraints(lambda v: constrain(v, image), x) == [str(PartitionSpec(batch, None, None, None))]
        assert constraints(lambda v: constrain(v, heads), x) == [str(PartitionSpec(batch, None, "tensor", None))]
        # a dimension the mesh axes do not divide is left whole: 6 rows over data x fsdp = 4
        odd = np.ones((6, 2, 2, 8), np.float32)
        assert constraints(lambda v: constrain(v, image), odd) == [str(PartitionSpec(None, None, None, None))]
        # a name the rules do not know (a config saved before it existed): left to XLA, not replicated
        assert constraints(lambda v: constrain(v, ("batch", "nameless")), x[0]) == []
    with activation_sharding(mesh, rules_with(batch=("fsdp",))):
        assert constraints(lambda v: constrain(v, image), x) == [str(PartitionSpec("fsdp", None, None, None))]
    with activation_sharding(make_mesh({"data": 1}), DEFAULT_AXIS_RULES):  # one device: nothing to place
        assert constraints(lambda v: constrain(v, image), x) == []


def fake_devices(slices, per_slice):
    return [SimpleNamespace(id=slice_index * per_slice + index, slice_index=slice_index, process_index=slice_index,
                            platform="cpu", device_kind="fake")
            for slice_index in range(slices) for index in range(per_slice)]


def slice_of(grid):
    return np.vectorize(lambda device: device.slice_index)(grid)


def test_multi_slice_meshes_put_only_the_dcn_axes_across_slices():
    devices = fake_devices(2, 4)
    default = device_grid({"data": 2, "fsdp": 4}, devices)  # data parallel across the 2 slices
    assert default.shape == (2, 4, 1)
    np.testing.assert_array_equal(slice_of(default)[:, :, 0], [[0, 0, 0, 0], [1, 1, 1, 1]])
    fsdp_across = device_grid({"data": 2, "fsdp": 4}, devices, {"data": 1, "fsdp": 2})
    np.testing.assert_array_equal(slice_of(fsdp_across)[:, :, 0], [[0, 0, 1, 1], [0, 0, 1, 1]])
    assert sorted(device.id for device in fsdp_across.flat) == list(range(8))
    with pytest.raises(ValueError, match="cannot be split"):
        device_grid({"data": 1, "fsdp": 8}, devices)  # data=1 cannot span 2 slices


def test_one_slice_falls_back_to_the_given_order_where_mesh_utils_fails(monkeypatch):
    devices = fake_devices(1, 6)

    def refuse(*args, **kwargs):
        raise ValueError("no layout")

    monkeypatch.setattr(sharding.mesh_utils, "create_device_mesh", refuse)
    grid = device_grid({"data": 3, "fsdp": 2}, devices)
    assert [device.id for device in grid.flat] == list(range(6))


def test_make_mesh_keeps_auto_axes_on_an_explicit_device_list():
    mesh = make_mesh({"data": -1}, jax.devices()[:1])
    assert mesh.axis_names == ("data", "fsdp", "tensor") and dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert all(str(kind).endswith("Auto") for kind in mesh.axis_types)
    assert batch_shards(mesh, DEFAULT_AXIS_RULES) == 1


def test_clip_weights_shard_their_largest_dimension_over_fsdp_when_it_divides(monkeypatch):
    mesh = SimpleNamespace(shape={"data": 1, "fsdp": 4, "tensor": 2})  # shapes only: no devices needed
    monkeypatch.setattr(sharding, "NamedSharding", lambda _mesh, spec: spec)
    specs = weight_shardings({"kernel": np.zeros((64, 256)), "odd": np.zeros((6, 3)), "bias": np.zeros(256)},
                             mesh, DEFAULT_AXIS_RULES)
    assert specs == {"kernel": PartitionSpec(None, "fsdp"), "odd": PartitionSpec(None, None),
                     "bias": PartitionSpec(None)}


SCRIPT = """
import json
import jax, numpy as np
from test_train import small_config, random_features
from upgpt_jax.data.pipeline import make_global_batch
from upgpt_jax.models.upgpt import build_model
from upgpt_jax.sharding import make_mesh, batch_sharding
from upgpt_jax.train.optimizer import make_optimizer
from upgpt_jax.train.state import abstract_state, make_init_fn
from upgpt_jax.train.step import make_train_step

assert jax.device_count() == 8
config = small_config()
model, optimizer = build_model(config.model), make_optimizer(config.optim, 1)


def parts(mesh_config, rules, devices):
    config.axis_rules = rules
    mesh = make_mesh(mesh_config, devices)
    _, shardings = abstract_state(model, config, optimizer, mesh)
    return mesh, shardings, make_train_step(model, config, optimizer, shardings, mesh)


def run(mesh_config, rules, devices, initial, steps=2):
    mesh, shardings, step = parts(mesh_config, rules, devices)
    state = jax.device_put(initial, shardings)
    features = make_global_batch(random_features(config, 0), mesh, rules)
    hlo = step.lower(state, features).as_text()  # refused if the features' sharding is not the step's
    losses = []
    for seed in range(steps):
        state, metrics = step(state, make_global_batch(random_features(config, seed), mesh, rules))
        losses.append(float(metrics["loss"]))
    specs = [str(s.spec) for s in jax.tree.leaves(shardings.params)]
    split = lambda axis: sum(axis in spec for spec in specs) if mesh.shape[axis] > 1 else 0
    return dict(losses=losses, params=[np.asarray(p) for p in jax.tree.leaves(jax.device_get(state.params))],
                tensor_params=split("tensor"), fsdp_params=split("fsdp"),
                constraints=hlo.count("sharding_constraint") + hlo.count("@Sharding"),  # Shardy or GSPMD
                feature_spec=str(features["pose"].sharding.spec))


default_rules = tuple(config.axis_rules)
one = jax.devices()[:1]
mesh, shardings, _ = parts({"data": 1, "fsdp": 1, "tensor": 1}, default_rules, one)
initial = jax.device_get(make_init_fn(model, config, optimizer, shardings)())
reference = run({"data": 1, "fsdp": 1, "tensor": 1}, default_rules, one, initial)
fsdp_batch = tuple((name, ("fsdp",) if name == "batch" else axes) for name, axes in default_rules)
cases = {"tensor=2": ({"data": 4, "fsdp": 1, "tensor": 2}, default_rules),
         "fsdp=4": ({"data": 2, "fsdp": 4, "tensor": 1}, default_rules),
         "2x2x2": ({"data": 2, "fsdp": 2, "tensor": 2}, default_rules)}
results = {}
for name, (mesh_config, rules) in cases.items():
    result = run(mesh_config, rules, jax.devices(), initial)
    result["param_diff"] = max(float(np.max(np.abs(a - b))) for a, b in zip(result.pop("params"), reference["params"]))
    results[name] = result
results["batch=fsdp"] = run({"data": 2, "fsdp": 4, "tensor": 1}, fsdp_batch, jax.devices(), initial, steps=0)
results["batch=fsdp"].pop("params")  # lowered, not run: the features' placement is what it checks
reference.pop("params")
results["reference"] = reference
print("RESULT " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path_factory.mktemp("sharded"),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads([row for row in run.stdout.splitlines() if row.startswith("RESULT ")][-1][len("RESULT "):])


@pytest.mark.parametrize("case", ["tensor=2", "fsdp=4", "2x2x2"])
def test_sharded_train_steps_equal_one_device(sharded_runs, case):
    result, reference = sharded_runs[case], sharded_runs["reference"]
    for loss, expected in zip(result["losses"], reference["losses"]):
        assert loss == pytest.approx(expected, rel=1e-5)
    assert result["param_diff"] < 1e-5


def test_parameters_are_really_sharded_over_tensor_and_fsdp(sharded_runs):
    assert sharded_runs["tensor=2"]["tensor_params"] > 0 and sharded_runs["tensor=2"]["fsdp_params"] == 0
    assert sharded_runs["fsdp=4"]["fsdp_params"] > 0 and sharded_runs["fsdp=4"]["tensor_params"] == 0
    assert sharded_runs["2x2x2"]["tensor_params"] > 0 and sharded_runs["2x2x2"]["fsdp_params"] > 0


def test_unet_activation_constraints_reach_the_lowered_step(sharded_runs):
    # ~8 per transformer block, 1 per res block, forward and backward: the small UNet has dozens.
    assert all(sharded_runs[case]["constraints"] >= 20 for case in ("tensor=2", "fsdp=4", "2x2x2", "batch=fsdp"))
    assert sharded_runs["reference"]["constraints"] == 0  # one device: nothing to place, nothing emitted


def test_the_batch_rule_places_the_batch(sharded_runs):
    assert sharded_runs["fsdp=4"]["feature_spec"] == str(PartitionSpec(("data", "fsdp")))
    assert sharded_runs["batch=fsdp"]["feature_spec"] == str(PartitionSpec(("fsdp",)))
