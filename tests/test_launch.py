"""launch/: the scripts parse, refuse bad usage with a message, and the notebook is valid."""

import json
import subprocess

import pytest

from tests.conftest import PROJECT

SCRIPTS = ["launch/local_multiprocess.sh", "launch/slurm.sbatch", "launch/tpu_vm.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses_and_prints_usage(script):
    assert subprocess.run(["bash", "-n", script], cwd=PROJECT).returncode == 0
    proc = subprocess.run(["bash", script], cwd=PROJECT, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_colab_notebook_runs_the_main_job():
    notebook = json.load(open(PROJECT / "launch" / "colab.ipynb"))
    assert notebook["nbformat"] == 4
    sources = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    install = next(s for s in sources if '"install"' in s)
    assert '".[cuda]"' in install and '".[tpu]"' in install  # the build for the runtime's accelerator
    assert any("jax.default_backend() != ACCELERATOR" in s for s in sources)
    main_cell = next(s for s in sources if "-m kdad_jax.main" in s)
    assert "--expect_platform" in main_cell
    assert "configs/efficientad.py:demo" in main_cell and (PROJECT / "configs" / "efficientad.py").exists()
    for source in sources:  # valid Python once the IPython magics (!, %) are set aside
        compile("\n".join(l for l in source.splitlines() if not l.lstrip().startswith(("!", "%"))),
                "cell", "exec")


@pytest.mark.parametrize("script,platform", [("launch/slurm.sbatch", "gpu"), ("launch/tpu_vm.sh", "tpu")])
def test_cluster_scripts_ask_for_their_accelerator(script, platform):
    assert f"--expect_platform={platform}" in (PROJECT / script).read_text()


def test_a_job_that_asked_for_a_gpu_stops_in_one_line_on_the_cpu_backend(tmp_path):
    proc = subprocess.run(["python", "-m", "kdad_jax.main", "--config=configs/efficientad.py:smoke",
                           f"--workdir={tmp_path / 'w'}", "--expect_platform=gpu"], cwd=PROJECT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    [line] = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert line.startswith("error: --expect_platform=gpu: JAX found the cpu backend")
    assert "pip install -e '.[cuda]'" in line and not (tmp_path / "w").exists()
