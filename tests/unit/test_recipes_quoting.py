"""User values reach the rendered sbatch script quoted: an --env value, a container image or mount with shell
syntax stays one literal word; a newline (which would add #SBATCH or shell lines) is refused. Nothing is submitted."""
from __future__ import annotations

import io
import subprocess

import pytest

pytest.importorskip("nemo_run")

from recipes import get_recipe  # noqa: E402
from recipes.executors import launch, rendered_sbatch, slurm_executor  # noqa: E402


@pytest.fixture(autouse=True)
def nemorun_home(tmp_path, monkeypatch):
    import nemo_run.config

    monkeypatch.setattr(nemo_run.config, "_NEMORUN_HOME", str(tmp_path / "nemo_home"))
    monkeypatch.setattr("sys.stdin", io.StringIO())


def test_hostile_values_stay_literal_in_the_script(tmp_path) -> None:
    recipe = get_recipe("logic_qwen3_0p6b_grpo")
    marker = tmp_path / "pwned"
    executor = slurm_executor(recipe, account="acct", container_image="img:1 --flag",
                              container_mounts=["/data dir:/data"],
                              env={"FOO": f"$(touch {marker})", "BAR": "a b; touch x", "PLAIN": "1"})
    script = rendered_sbatch(launch(recipe, executor, dryrun=True)["experiment_dir"], recipe)
    assert "export PLAIN=1" in script  # plain values render as before
    srun = next(line for line in script.splitlines()
                if line.startswith("srun ") and " -m rlad_megatron.cli train " in line)
    assert "--container-image 'img:1 --flag' " in srun and "--container-mounts '/data dir:/data'," in srun
    exports = "\n".join(line for line in script.splitlines() if line.startswith("export "))
    shell = subprocess.run(["bash", "-c", exports + '\nprintf "%s|%s" "$FOO" "$BAR"'], capture_output=True,
                           text=True, cwd=tmp_path, timeout=30)
    assert shell.returncode == 0 and shell.stdout == f"$(touch {marker})|a b; touch x"
    assert not marker.exists() and not (tmp_path / "x").exists()
    assert subprocess.run(["bash", "-n"], input=script, text=True, timeout=30).returncode == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"account": "acct\n#SBATCH --nodes=100"}, "newlines are not allowed"),
    ({"partition": "batch --qos=high"}, "only letters, digits"),
    ({"env": {"FOO": "a\nrm -rf /"}}, "newlines are not allowed"),
    ({"env": {"FOO;id": "1"}}, "environment variable name"),
    ({"container_image": "img\n--flag"}, "newlines are not allowed"),
    ({"container_mounts": ["/a,/b:/c"]}, "cannot hold one"),
])
def test_values_that_would_inject_lines_are_refused(kwargs, message) -> None:
    recipe = get_recipe("logic_qwen3_0p6b_grpo")
    args = {"account": "acct", **kwargs}
    with pytest.raises(ValueError, match=message):
        slurm_executor(recipe, **args)
