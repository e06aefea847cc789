"""config.pod.libtpu_flags: put into LIBTPU_INIT_ARGS before libtpu starts, by train.py and the AOT
command; checked on the environment alone, and through libtpu itself where it is installed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from configs.pods.upgpt_256_v6e import get_config as v6e_config
from configs.synthetic_tiny import get_config as tiny_config
from upgpt_jax.cli_errors import BadInput
from upgpt_jax.tpu_flags import ASYNC_COLLECTIVE_FLAGS, ENV_VAR, apply_libtpu_flags, config_libtpu_flags

REPO = Path(__file__).resolve().parents[1]


def test_config_flags_come_first_and_the_users_win(monkeypatch):
    from jax._src import xla_bridge

    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    environ = {ENV_VAR: "--xla_enable_async_all_gather=false"}
    value = apply_libtpu_flags(["--a=1", "--xla_enable_async_all_gather=true"], environ)
    assert value == environ[ENV_VAR] == "--a=1 --xla_enable_async_all_gather=true --xla_enable_async_all_gather=false"
    assert apply_libtpu_flags([], {}) == ""
    with pytest.raises(BadInput, match="'xla_x=1' is not a '--name=value' libtpu flag"):
        apply_libtpu_flags(["xla_x=1"], {})


def test_too_late_once_jax_has_its_backends():
    jax.devices()
    with pytest.raises(RuntimeError, match="before JAX creates its backends"):
        apply_libtpu_flags(["--a=1"], {})


def test_config_flags_are_read_from_the_pod_section():
    config = v6e_config()
    assert config_libtpu_flags(config) == ()
    config.pod.libtpu_flags = ASYNC_COLLECTIVE_FLAGS
    assert config_libtpu_flags(config) == ASYNC_COLLECTIVE_FLAGS
    assert config_libtpu_flags(tiny_config()) == ()


def aot(tmp_path, flags, *args):
    """The AOT command on the tiny config with a pod section holding `flags`, for TPU v6e 2x2."""
    config_file = tmp_path / "pod_tiny.py"
    config_file.write_text(
        "import ml_collections\nfrom configs.synthetic_tiny import get_config as tiny\n\n\n"
        "def get_config():\n    config = tiny()\n"
        f"    config.pod = ml_collections.ConfigDict(dict(topology='v6e:2x2', chips=4, per_chip_batch=2,"
        f" libtpu_flags={tuple(flags)!r}))\n    return config\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop(ENV_VAR, None)
    return subprocess.run([sys.executable, "-m", "upgpt_jax.aot", "--config", str(config_file),
                           "--config.mesh.fsdp=4", "--config.mesh.data=1", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_libtpu_reads_the_configs_flags(tmp_path):
    pytest.importorskip("libtpu", reason="libtpu (the tpu extra) compiles for TPU topologies")
    process = aot(tmp_path, ["--xla_no_such_flag_upgpt=true"])
    assert process.returncode != 0 and "xla_no_such_flag_upgpt" in process.stderr
    # The pods' flags: the FSDP weight all-gathers become asynchronous and overlap compute (without
    # them none does on v6e: benchmarks/RESULTS.md).
    process = aot(tmp_path, ASYNC_COLLECTIVE_FLAGS)
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads(process.stdout.strip().splitlines()[-1])
    assert result["libtpu_flags"] == " ".join(ASYNC_COLLECTIVE_FLAGS)
    gathers = result["collectives"]["all-gather"]
    assert gathers["asynchronous"] > 0 and gathers["overlapped"] > 0
