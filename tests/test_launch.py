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
    assert any("pip install" in s for s in sources)
    main_cell = next(s for s in sources if "-m kdad_jax.main" in s)
    assert "configs/efficientad.py:demo" in main_cell and (PROJECT / "configs" / "efficientad.py").exists()
    for source in sources:  # valid Python once the IPython magics (!, %) are set aside
        compile("\n".join(l for l in source.splitlines() if not l.lstrip().startswith(("!", "%"))),
                "cell", "exec")
