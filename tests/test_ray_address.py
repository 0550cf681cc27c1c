"""Which Ray a study uses: its own local instance unless RAY_ADDRESS names a cluster, also
when `ray start` has a cluster up on this machine (named in Ray's `ray_current_cluster`
file, which a bare ray.init() would follow). The cluster is real (`ray start --head` in a
process session of its own, ended by killing that session, never `ray stop`)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import tiny_spec
from tests.test_cluster import Cluster
from tests.test_outcome import NEVER

pytestmark = pytest.mark.slow  # a cluster up and two studies: about 35 s
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def head(tmp_path: Path) -> Iterator[Cluster]:
    """A one-node cluster of 3 CPUs (this machine's own instance would have its real count),
    whose address `ray start` writes into the Ray temp folder that RAY_TMPDIR names."""
    root = Path(tempfile.mkdtemp(prefix="sa-", dir="/tmp"))  # short: socket path limits
    c = Cluster(tmp_path)
    c.temp = str(root / "ray")
    c.env["RAY_TMPDIR"] = str(root)
    try:
        c.start("head", "--head", f"--port={c.port}", "--num-cpus=3",
                "--include-dashboard=false")
        c.wait_nodes(1)
        assert (root / "ray" / "ray_current_cluster").read_text().strip().endswith(
            f":{c.port}")
        yield c
    finally:
        c.down()
        shutil.rmtree(root, ignore_errors=True)


def _run(head: Cluster, workdir: Path, name: str, address: str | None) -> str:
    import subprocess

    (workdir / f"{name}.yaml").write_text(yaml.safe_dump(tiny_spec(
        name=name, search={"sampler": "random", "trials": 1, "seed": 3})))
    env = {k: v for k, v in head.env.items() if k != "RAY_ADDRESS"}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{workdir}/mlflow.db",
               STUDY_OPTUNA_STORAGE=f"sqlite:///{workdir}/optuna.db",
               STUDY_RESULTS_DIR=str(workdir / "results"), PYTHONPATH=str(ROOT),
               **({"RAY_ADDRESS": address} if address else {}))
    r = subprocess.run([sys.executable, "-m", "study.cli", "run", f"{name}.yaml"],
                       cwd=workdir, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    said = r.stdout + r.stderr
    assert not [n for n in NEVER if n in said], said[-3000:]
    return r.stderr


def test_own_instance_beside_a_cluster_and_the_cluster_when_named(head, workdir):
    local = _run(head, workdir, "beside", None)
    assert f"Ray {os.cpu_count()} CPU" in local  # not the cluster's 3
    address = f"127.0.0.1:{head.port}"
    joined = _run(head, workdir, "joined", address)
    assert "Ray 3 CPU" in joined
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    for study, where in (("beside", "local"), ("joined", address)):
        exp = client.get_experiment_by_name(study)
        (parent,) = client.search_runs([exp.experiment_id], "tags.`study.execution` != ''")
        assert parent.data.tags["ray.address"] == where
        assert parent.info.status == "FINISHED"
