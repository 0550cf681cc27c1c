"""Secrets in store URIs and in the environment reach no terminal, log, artifact, tag, report
or file: real Ray, real Optuna (SQLite with a password query), real MLflow (SQLite store and
an `mlflow server` with basic auth), every file written scanned (tests/secret_scan.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from study import cli
from study.redact import (
    is_credential_var,
    redact_tree,
    redact_uri,
    split_http_credentials,
    usable_uri,
)
from study.spec import SpecError
from tests.conftest import tiny_spec
from tests.secret_scan import basic_auth_form, find_secrets

PW = "S3cr3t-Pw-9f2"
AWS_SECRET = "AwsS3cretKey-7Qx2Zz9"


@pytest.mark.parametrize("uri, shown", [
    (f"postgresql://user:{PW}@db/optuna", "postgresql://user:***@db/optuna"),
    (f"postgresql+psycopg2://user:{PW}@db:5432/o?sslmode=require",
     "postgresql+psycopg2://user:***@db:5432/o?sslmode=require"),
    (f"sqlite:////tmp/o.db?password={PW}", "sqlite:////tmp/o.db?password=***"),
    (f"mysql://u@h/db?api_key={PW}&charset=utf8", "mysql://u@h/db?api_key=***&charset=utf8"),
    (f"http://admin:{PW}@127.0.0.1:5000/", "http://***@127.0.0.1:5000/"),
    (f"https://mlflow.example/x?token={PW}&a=1", "https://mlflow.example/x?token=***&a=1"),
    (f"s3://AKIA:{PW}@bucket/path", "s3://***@bucket/path"),
    ("sqlite:////tmp/plain.db", "sqlite:////tmp/plain.db"),
    ("sqlite:///:memory:", "sqlite:///:memory:"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
])
def test_redact_uri(uri, shown):
    assert redact_uri(uri) == shown
    assert PW not in redact_tree({"storage": {"optuna": uri}, "list": [f"see {uri} now"]}) \
        .__repr__()


def test_http_credentials_split_and_credential_vars():
    assert split_http_credentials(f"http://al%40ice:{PW}@h:5000/p") == \
        ("http://h:5000/p", "al@ice", PW)
    assert split_http_credentials("sqlite:///x.db") == ("sqlite:///x.db", None, None)
    assert all(is_credential_var(n) for n in ("AWS_SECRET_ACCESS_KEY", "AWS_REGION",
                                              "GITHUB_TOKEN", "DB_PASSWORD", "MY_API_KEY"))
    assert not any(is_credential_var(n) for n in ("HOME", "PATH", "RAY_ADDRESS"))


def test_usable_uri_needs_the_secret_for_a_masked_copy(monkeypatch):
    full = f"postgresql://user:{PW}@db/optuna"
    stored = redact_uri(full)
    assert usable_uri("sqlite:////x.db", [], what="x") == "sqlite:////x.db"
    assert usable_uri(stored, [("ENV", full)], what="x") == full
    assert usable_uri(stored, [], what="x", explicit=("--flag", full)) == full
    with pytest.raises(SpecError, match="--flag, ENV"):  # another host's URL is not taken
        usable_uri(stored, [("ENV", f"postgresql://user:{PW}@elsewhere/optuna")], what="x",
                   explicit=("--flag", None))


def write_spec(folder: Path, raw: dict) -> Path:
    path = folder / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def parent_run(tracking: str, name: str):
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name(name)
    (parent,) = [r for r in client.search_runs([exp.experiment_id])
                 if "mlflow.parentRunId" not in r.data.tags]
    return client, parent


def test_database_password_and_aws_keys_leak_nowhere(ray_local, workdir, capfd, monkeypatch,
                                                     tmp_path_factory):
    """A password in the Optuna URL and AWS credentials in the environment: a study, its
    report rebuilt and a resume; then every file under the work folder (stores, MLflow
    artifacts, Tune's experiment state, checkpoints, reports), Ray's session folder (its
    logs, runtime_env_agent.log among them) and all output are searched for them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTONLY00000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    storage = f"sqlite:///{workdir}/optuna.db?password={PW}"
    tracking = f"sqlite:///{workdir}/mlflow.db"
    spec_dir = tmp_path_factory.mktemp("user-spec")  # the user's own file holds the secret
    path = write_spec(spec_dir, tiny_spec(name="secrets", search={"trials": 1, "seed": 3},
                                          storage={"optuna": storage, "tracking": tracking}))
    outputs: list[str] = []

    def captured() -> str:
        out, err = capfd.readouterr()
        outputs.extend([out, err])
        return err

    assert cli.main(["run", str(path)]) == 0
    captured()
    client, parent = parent_run(tracking, "secrets")
    execution = parent.data.tags["study.execution"]
    assert parent.data.tags["optuna.storage"] == f"sqlite:///{workdir}/optuna.db?password=***"

    # report: the stored Optuna URL is masked, so it asks for the secret, then uses it
    assert cli.main(["report", execution, "--tracking-uri", tracking]) == 2
    err = captured()
    assert "STUDY_OPTUNA_STORAGE" in err and "--optuna-storage" in err and "Traceback" not in err
    monkeypatch.setenv("STUDY_OPTUNA_STORAGE", storage)
    assert cli.main(["report", execution, "--tracking-uri", tracking]) == 0
    captured()

    # resume (a driver that died after its last run): the same, the secret from the env
    client.set_tag(parent.info.run_id, "study.status", "interrupted")
    monkeypatch.delenv("STUDY_OPTUNA_STORAGE")
    assert cli.main(["resume", execution, "--tracking-uri", tracking, "--quiet"]) == 2
    err = captured()
    assert "STUDY_OPTUNA_STORAGE" in err and "--optuna-storage" in err and "Traceback" not in err
    assert cli.main(["resume", execution, "--tracking-uri", tracking, "--quiet",
                     "--optuna-storage", storage]) == 0
    captured()
    assert parent_run(tracking, "secrets")[1].data.tags["study.status"] == "finished"

    session = Path(ray_local.address_info["session_dir"])
    assert (session / "logs").is_dir()
    leaks = find_secrets([PW, AWS_SECRET], folders=[workdir, session],
                         texts={f"output {i}": t for i, t in enumerate(outputs)})
    assert not leaks, "\n".join(leaks)


@pytest.fixture
def auth_server(tmp_path_factory, monkeypatch):
    """A real `mlflow server` with MLflow's basic-auth app; admin's password is PW."""
    from tests.test_tracking_server import tracking_server

    # no job runner processes (three of them): nothing here uses MLflow's jobs
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    server = tracking_server(tmp_path_factory.mktemp("mlflow-auth"), auth_password=PW)
    server.start()
    yield server
    server.stop()


def test_http_user_password_tracking_uri_works_and_leaks_nowhere(
        ray_local, workdir, auth_server, capfd, monkeypatch, tmp_path_factory):
    """`http://admin:PW@host` as the tracking URI: the study logs to the authenticated
    server (MLflow gets the credentials from its variables), the report is rebuilt from it,
    and the password is in no file, artifact (the server's too) or output."""
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)  # also undoes what the run sets
    uri = auth_server.uri.replace("http://", f"http://admin:{PW}@")
    path = write_spec(tmp_path_factory.mktemp("user-spec"),
                      tiny_spec(name="authsecret", search={"trials": 1, "seed": 3},
                                storage={"tracking": uri}))
    assert cli.main(["run", str(path), "--quiet"]) == 0
    out1, err1 = capfd.readouterr()
    assert f"MLflow: {auth_server.uri}" in out1

    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    # without credentials the server refuses: said in one line, exit 2
    assert cli.main(["report", "authsecret", "--tracking-uri", auth_server.uri]) == 2
    out2, err2 = capfd.readouterr()
    assert "MLFLOW_TRACKING_PASSWORD" in err2 and "Traceback" not in err2
    assert cli.main(["report", "authsecret", "--tracking-uri", uri, "--no-log"]) == 0
    out3, err3 = capfd.readouterr()

    import os

    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = "admin", PW
    client, parent = parent_run(auth_server.uri, "authsecret")
    assert parent.data.tags["study.status"] == "finished"
    assert len(client.search_runs([parent.info.experiment_id])) == 3  # parent + one pair
    leaks = find_secrets([PW, basic_auth_form("admin", PW)],
                         folders=[workdir, auth_server.root / "artifacts",
                                  ray_local.address_info["session_dir"]],
                         texts={"out": out1 + out2 + out3, "err": err1 + err2 + err3})
    assert not leaks, "\n".join(leaks)
    # the server's own files (its log, its stores) hold no plain password either
    server_files = [p for p in auth_server.root.iterdir() if p.name != "artifacts"]
    assert not find_secrets([PW], folders=[p for p in server_files if p.is_dir()],
                            texts={p.name: p.read_bytes() for p in server_files
                                   if p.is_file()})
