"""Deployment files, checked as far as a machine without a Docker engine or Kubernetes allows:
the compose file through docker-compose and its MLflow command run for real, the cluster
launcher YAML through Ray's own validation, the RayJob against KubeRay v1.7.0's RayJob CRD, and
every command the launchers run inside the image against the Dockerfile's packages and PATH."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from importlib.metadata import distribution
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from study.spec import load_spec
from tests.conftest import ROOT
from tests.test_cluster import free_port

DOCKER = ROOT / "docker"
CLUSTER = ROOT / "cluster"
VENV_BIN = Path(sys.executable).parent
COMPOSE_VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?)-([^}]*))?\}")


def cmd(service: dict) -> str:
    c = service["command"]
    return " ".join(c) if isinstance(c, list) else c


def resolve_compose_vars(text: str, env: dict[str, str]) -> str:
    """${VAR}, ${VAR:-default} (unset or empty), ${VAR-default} (unset) and $$, as compose does."""
    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, colon, default = m.groups()
        value = env.get(name)
        if default is None:
            return value or ""
        return default if value is None or (colon and value == "") else value

    return COMPOSE_VAR.sub(one, text)


def compose_service(name: str) -> dict:
    """One service of docker-compose.yml, ${...} resolved against this environment."""
    text = resolve_compose_vars((DOCKER / "docker-compose.yml").read_text(), dict(os.environ))
    assert "${" not in text, "docker-compose.yml: a ${...} form this reader does not resolve"
    return yaml.safe_load(text)["services"][name]


def mlflow_server_command(options: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """argv and environment of the compose file's MLflow service, with the values of `options`
    (where it listens and stores) in place of the compose file's; every other flag is kept."""
    svc = compose_service("mlflow")
    c = svc["command"]
    argv = shlex.split(c) if isinstance(c, str) else list(c)
    assert argv[:2] == ["mlflow", "server"], argv
    argv[0] = str(VENV_BIN / "mlflow")
    for flag, value in options.items():
        if flag in argv:
            del argv[argv.index(flag):argv.index(flag) + 2]
        argv = [a for a in argv if not a.startswith(flag + "=")] + [flag, value]
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return argv, {k: str(v) for k, v in env.items()}


class MlflowServer:
    """A real `mlflow server` started as the compose file's MLflow service, on 127.0.0.1
    with a SQLite store under `root` (or `backend`); `app_env` adds environment (e.g.
    MLflow's basic auth)."""

    def __init__(self, root: Path, extra: list[str] | None = None,
                 app_env: dict[str, str] | None = None, backend: str | None = None) -> None:
        self.root, self.port = root, free_port()
        self.backend = backend or f"sqlite:///{root}/server.db"  # a study's own store too
        self.uri = f"http://127.0.0.1:{self.port}"
        self.extra, self.app_env = extra or [], app_env or {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        argv, env = mlflow_server_command({
            "--host": "127.0.0.1", "--port": str(self.port), "--workers": "1",
            "--backend-store-uri": self.backend,
            "--artifacts-destination": str(self.root / "artifacts")})
        self.proc = subprocess.Popen(
            argv + self.extra, env={**os.environ, **env, **self.app_env}, cwd=self.root,
            stdout=open(self.root / "server.log", "a"), stderr=subprocess.STDOUT,  # noqa: SIM115
            start_new_session=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 90:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2):
                    return
            except OSError:
                assert self.proc.poll() is None, (self.root / "server.log").read_text()[-2000:]
                time.sleep(0.3)
        raise AssertionError("mlflow server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def http_status(url: str, host: str, body: dict | None = None) -> int:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={
        "Host": host, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


# --- docker compose -------------------------------------------------------------------------

def compose_config() -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is missing: .ci/run installs Debian's docker-compose")
        pytest.skip("docker-compose (Debian package) not installed")
    r = subprocess.run([exe, "-f", str(DOCKER / "docker-compose.yml"), "config"],
                       capture_output=True, text=True, env={**os.environ,
                                                            "POSTGRES_PASSWORD": "x"})
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def test_compose_file_is_valid_and_complete():
    cfg = compose_config()
    services = cfg["services"]
    assert set(services) == {"postgres", "mlflow", "ray-head", "ray-worker"}
    for name, svc in services.items():
        for port in svc.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond localhost"
    head, worker = services["ray-head"], services["ray-worker"]
    assert "--head" in cmd(head) and "--address=ray-head:6379" in cmd(worker)
    for svc in (head, worker):
        env = svc["environment"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["STUDY_OPTUNA_STORAGE"].startswith("postgresql://")
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"]
    mlflow = cmd(services["mlflow"])
    assert "postgresql://" in mlflow and "--artifacts-destination /mlartifacts" in mlflow
    assert any("mlartifacts" in str(v) for v in services["mlflow"]["volumes"])
    assert (DOCKER / "initdb" / "01-optuna.sql").read_text().count("CREATE DATABASE optuna")
    # Compose v2 warns that `version` is obsolete; the file is for v2
    assert "version" not in yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_compose_mlflow_server_answers_the_ray_containers(tmp_path):
    """The MLflow service as compose starts it accepts the Host header the Ray containers send
    and a browser on the machine sends to its published port (MLflow 3.17 answers 403 to
    others), its health check is a request that would see a 403, and a Host it does not know
    is still refused."""
    host = urlsplit(compose_service("ray-head")["environment"]["MLFLOW_TRACKING_URI"]).netloc
    mlflow = compose_service("mlflow")
    published = [p.rsplit(":", 1)[0] for p in mlflow["ports"]]  # "127.0.0.1:5000"
    server = MlflowServer(tmp_path)
    server.start()
    try:
        api = server.uri + "/api/2.0/mlflow"
        for h in [host, *published]:
            assert http_status(api + "/experiments/search?max_results=1", h) == 200, h
        assert http_status(api + "/experiments/create", host, {"name": "from-ray"}) == 200
        assert http_status(api + "/experiments/search?max_results=1", "evil.example:5000") == 403
        # compose's health check: curl's -H headers and URL, sent to this server
        check = mlflow["healthcheck"]["test"]
        headers = dict(check[i + 1].split(": ", 1) for i, a in enumerate(check) if a == "-H")
        url = urlsplit(check[-1])
        assert headers.get("Host") == host and url.path.startswith("/api/"), check
        assert http_status(f"{server.uri}{url.path}?{url.query}", headers["Host"]) == 200
    finally:
        server.stop()


@pytest.mark.parametrize("path", ["kuberay-rayjob.yaml", "ray-cluster-aws.yaml"])
def test_documented_mlflow_server_accepts_the_clusters_host(path):
    """Each cluster file names its MLflow URL and the --allowed-hosts its server needs; MLflow's
    own Host check (the function its server middleware calls) accepts that URL's Host."""
    from mlflow.server.security_utils import is_allowed_host_header

    text = (CLUSTER / path).read_text()
    urls = re.findall(r"MLFLOW_TRACKING_URI=(\S+)", text)
    allowed = re.findall(r"--allowed-hosts\s+(\S+)", text)
    assert urls and len(allowed) == 1, f"{path}: tracking URL and --allowed-hosts expected"
    hosts = allowed[0].split(",")
    assert "*" not in hosts
    for url in urls:
        assert is_allowed_host_header(hosts, urlsplit(url).netloc), (path, url, hosts)


# --- the images ----------------------------------------------------------------------------

def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) per instruction, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        if buf.strip():
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def dockerfile_cmd(path: Path) -> list[str]:
    return json.loads(next(rest for word, rest in dockerfile(path) if word == "CMD"))


def shell_steps(script: str) -> list[list[str]]:
    """The simple commands of a shell line, split at ; && || | and `then`/`fi` words."""
    steps, cur = [], []
    lex = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lex.wordchars += "${}[]<>:,+@%!"
    for tok in lex:
        if tok in {";", "&&", "||", "|", "&"} or tok in {"then", "fi", "do", "done", "else"}:
            steps, cur = steps + [cur] * bool(cur), []
        else:
            cur.append(tok)
    return steps + [cur] * bool(cur)


def pip_installs(path: Path) -> list[list[str]]:
    """Arguments of every `pip install` in the Dockerfile's RUN steps."""
    runs = [rest for word, rest in dockerfile(path) if word == "RUN"]
    return [s[2:] for r in runs for s in shell_steps(r) if s[:2] == ["pip", "install"]]


def constraints() -> dict[str, str]:
    """name -> version of docker/constraints.txt, every line an exact pin."""
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not an exact pin"
            pins[name.lower()] = version
    return pins


def test_images_commands_exist_and_sources_are_copied():
    for exe in ("ray", "study", "mlflow"):  # what the images run, installed by this package
        assert (VENV_BIN / exe).exists(), exe
    assert dockerfile_cmd(DOCKER / "Dockerfile")[0] == "ray"
    assert dockerfile_cmd(DOCKER / "Dockerfile.mlflow")[0] == "mlflow"
    for path, context in ((DOCKER / "Dockerfile", ROOT), (DOCKER / "Dockerfile.mlflow", DOCKER)):
        for word, rest in dockerfile(path):
            if word == "COPY":
                for src in shlex.split(rest)[:-1]:
                    assert (context / src).exists(), f"{path.name}: COPY source {src} missing"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    installs = pip_installs(DOCKER / "Dockerfile")
    assert "postgres" in extras and any('.[postgres]' in args for args in installs)
    assert "torch" in installs[0]  # torch first, from the index that matches the base


def lower_bounds() -> dict[str, str]:
    """name -> the version after '>=' of each pyproject dependency (the tested versions)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.match(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?\s*>=\s*([^,\s]+)", dep)
        if m:
            out[m.group(1).lower()] = m.group(3)
    return out


def test_images_pin_the_versions_the_manifests_assume():
    pins, tested = constraints(), lower_bounds()
    for name in ("torch", "ray", "optuna", "mlflow"):
        assert pins.get(name) == tested[name], f"constraints.txt: {name} must be =={tested[name]}"
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == pins["ray"]
    # the PostgreSQL driver the images carry is the one SQLAlchemy opens postgresql:// with
    from sqlalchemy.engine.url import make_url

    driver = make_url("postgresql://u@h/db").get_dialect().driver
    assert pins.get(driver) and pins.get("sqlalchemy") == distribution("sqlalchemy").version, (
        f"constraints.txt: SQLAlchemy opens postgresql:// with {driver}: pin it")
    # every pip install of both images goes through the pins, copied into the image
    for path in (DOCKER / "Dockerfile", DOCKER / "Dockerfile.mlflow"):
        copied = [shlex.split(rest) for word, rest in dockerfile(path) if word == "COPY"]
        assert any(c[0].endswith("constraints.txt") for c in copied), path.name
        installs = pip_installs(path)
        assert installs, path
        for args in installs:
            assert "-c" in args, f"{path.name}: pip install {' '.join(args)} without -c"
            assert args[args.index("-c") + 1].endswith("constraints.txt")
            for i, pkg in enumerate(args):
                takes_value = i > 0 and args[i - 1] in {"-c", "-i", "--index-url", "-r"}
                if not pkg.startswith(("-", ".")) and not takes_value:
                    assert re.split(r"[\[=<>]", pkg)[0].lower() in pins, (
                        f"{path.name}: {pkg} is not pinned in constraints.txt")


# What the image's command lookups rest on. Commands of the Debian/Ubuntu packages the
# Dockerfile installs with apt (they land in /usr/bin), and of both base images
# (python:3.11-slim, Debian; nvidia/cuda ...-ubuntu24.04): bash and coreutils.
PACKAGE_COMMANDS = {"bash": {"bash"}, "curl": {"curl"}, "wget": {"wget"}, "rsync": {"rsync"},
                    "openssh-client": {"ssh", "scp"}}
BASE_COMMANDS = {"sh", "bash", "cat", "mkdir", "printenv", "ls", "whoami", "chown", "id"}
# Debian's /etc/profile (base-files) sets this PATH for root in every login shell, dropping the
# image's ENV PATH; Ubuntu's /etc/profile leaves PATH alone. Both then read /etc/profile.d/*.sh.
DEBIAN_LOGIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Commands that Ray 2.60's cluster launcher runs inside the container (autoscaler/_private/
# command_runner.py: `docker exec ... printenv HOME`, `mkdir -p`, `rsync -e 'docker exec -i'`,
# `cat`; the head's autoscaler reaches new workers with ssh and rsync) and that KubeRay v1.7.0
# runs in it (`/bin/bash -c` container commands and exec probes, `ray start` / `ray
# health-check` / `ray kuberay-autoscaler` / `ray job submit`, the submitter's `python -c`
# health wait, and `wget` in the exec probes it uses for RayService workers and Ray < 2.53).
LAUNCHER_COMMANDS = {"printenv", "mkdir", "rsync", "cat", "ssh"}
KUBERAY_COMMANDS = {"bash", "ray", "python", "wget"}


class Image:
    """The study image as docker/Dockerfile builds it, read from the file: which commands are
    where, and the PATH of a plain command (`docker exec`, KubeRay) and of a login shell."""

    def __init__(self, path: Path = DOCKER / "Dockerfile") -> None:
        steps = dockerfile(path)
        env = dict(kv.split("=", 1) for word, rest in steps if word == "ENV"
                   for kv in shlex.split(rest))
        self.venv = env["VIRTUAL_ENV"]
        self.path = env["PATH"].replace("$PATH", DEBIAN_LOGIN_PATH)
        runs = [s for word, rest in steps if word == "RUN" for s in shell_steps(rest)]
        assert ["python3", "-m", "venv", self.venv] in runs, "the venv is not VIRTUAL_ENV"
        self.packages = {w for s in runs if s[:2] == ["apt-get", "install"]
                         for w in s[2:] if not w.startswith("-")}
        self.profile_d = [ROOT / shlex.split(rest)[0] for word, rest in steps if word == "COPY"
                          and shlex.split(rest)[-1].startswith("/etc/profile.d/")]
        self.files = {("/usr/bin", c) for c in BASE_COMMANDS}
        self.files |= {("/usr/bin", c) for p in self.packages for c in PACKAGE_COMMANDS.get(p, ())}
        self.files |= {("/bin", c) for d, c in set(self.files)}  # merged /usr
        self.files |= {(f"{self.venv}/bin", c) for c in self.venv_commands(runs)}

    def venv_commands(self, runs: list[list[str]]) -> set[str]:
        """python, pip and the console scripts of what `pip install` puts into the venv:
        this project's (pyproject) and Ray's (its installed distribution's entry points)."""
        installs = [s for s in runs if s[:2] == ["pip", "install"]]
        assert any(".[postgres]" in s for s in installs), "the project is not installed"
        scripts = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
        ray = {e.name for e in distribution("ray").entry_points if e.group == "console_scripts"}
        return {"python", "python3", "pip"} | scripts | ray

    def login_path(self, debian: bool) -> str:
        """PATH in `bash --login`: /etc/profile (Debian's resets it), then the image's
        /etc/profile.d scripts, sourced for real by bash."""
        reset = f"PATH={DEBIAN_LOGIN_PATH}; export PATH; " if debian else ""
        script = reset + "".join(f'. "{p}"; ' for p in self.profile_d) + 'printf %s "$PATH"'
        r = subprocess.run(["bash", "--noprofile", "--norc", "-c", script], capture_output=True,
                           text=True, env={"PATH": self.path, "HOME": "/nonexistent"})
        assert r.returncode == 0, r.stderr
        return r.stdout

    def which(self, command: str, path: str) -> str | None:
        return next((f"{d}/{command}" for d in path.split(":") if (d, command) in self.files),
                    None)


def first_words(commands: list[str]) -> set[str]:
    """The programs a list of shell command lines runs (not variable assignments)."""
    out = set()
    for line in commands:
        for step in shell_steps(line):
            words = [w for w in step if not re.match(r"\w+=", w)]
            if words and words[0] not in {"if", "!", "ulimit", "export", "cd"}:
                out.add(words[0])
    return out


def launcher_config() -> dict:
    """The cluster launcher's config as `ray up` reads it: filled with Ray's AWS defaults and
    checked against ray-schema.json by Ray's own functions. They are private in Ray 2.60
    (there is no public validator short of `ray up` against AWS): if Ray moves them, this
    import fails loudly and the test must follow."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(yaml.safe_load((CLUSTER / "ray-cluster-aws.yaml").read_text()))
    validate_config(cfg)
    return cfg


def commands_run_in_image() -> dict[str, set[str]]:
    """who -> the programs it runs inside the study image."""
    cfg = launcher_config()
    launcher = [c for key in ("setup_commands", "head_setup_commands", "worker_setup_commands",
                              "head_start_ray_commands", "worker_start_ray_commands")
                for c in cfg[key]]
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    compose = [cmd(compose_service(s)) for s in ("ray-head", "ray-worker")]
    return {"ray up": LAUNCHER_COMMANDS | first_words(launcher),
            "KubeRay": KUBERAY_COMMANDS | first_words([job["spec"]["entrypoint"]]),
            "docker compose": first_words(compose) | {"study"}}


@pytest.mark.parametrize("debian", [True, False], ids=["debian-base", "ubuntu-base"])
def test_every_command_run_inside_the_image_is_on_its_path(debian):
    image = Image()
    plain, login = image.path, image.login_path(debian)
    assert image.venv + "/bin" in login.split(":"), f"login shell PATH {login} lacks the venv"
    missing = [f"{who}: {c} ({kind} PATH {path})"
               for who, needed in commands_run_in_image().items() for c in sorted(needed)
               for kind, path in (("plain", plain), ("login shell", login))
               if image.which(c, path) is None]
    assert not missing, "\n".join(missing)
    assert image.which("ray", login) == image.which("ray", plain) == f"{image.venv}/bin/ray"


# --- cluster launcher and KubeRay ----------------------------------------------------------

def test_cluster_launcher_config_passes_rays_own_validation():
    cfg = launcher_config()  # Ray 2.60's prepare_config + validate_config (ray-schema.json)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())
    env = " ".join(cfg["docker"]["run_options"])
    for var in ("MLFLOW_TRACKING_URI", "STUDY_OPTUNA_STORAGE", "STUDY_RESULTS_DIR"):
        assert var in env
    # nothing installed at start-up: Ray's default `pip install boto3` on the head would
    # fetch an unpinned boto3 that the image already has
    setup = cfg["setup_commands"] + cfg["head_setup_commands"] + cfg["worker_setup_commands"]
    assert not [c for c in setup if "pip install" in c], setup
    assert "boto3" in constraints() and any("boto3" in a for a in pip_installs(
        DOCKER / "Dockerfile"))


def cluster_images() -> set[str]:
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    cluster = job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    images = {c["image"] for p in pods for c in p["template"]["spec"]["containers"]}
    return images | {launcher_config()["docker"]["image"]}


def test_readme_says_how_to_build_and_push_the_cluster_image():
    readme = (ROOT / "README.md").read_text()
    assert "### Deployment files" in readme
    section = readme[readme.index("### Deployment files"):]
    section = section[:section.index("\n## ")]
    for image in cluster_images():
        assert re.search(rf"docker build -f docker/Dockerfile .*-t {re.escape(image)} \.",
                         section), f"README: no docker build for {image}"
        assert f"docker push {image}" in section, f"README: no docker push for {image}"
    for words in ("Docker Compose v2", "KubeRay 1.7", f"Ray {constraints()['ray']}"):
        assert words in section, f"README's deployment section does not name {words}"


def obj(fields: dict, required: tuple = (), more: str = "") -> dict:
    """A CRD object: `fields` typed, `more` the other field names the CRD defines there (any
    value); a name the CRD does not define is an error (the API server would drop it)."""
    props = {**{k: {} for k in more.split()}, **fields}
    return {"type": "object", "properties": props, "required": list(required),
            "additionalProperties": False}


def array(items: dict) -> dict:
    return {"type": "array", "items": items}


STR, BOOL = {"type": "string"}, {"type": "boolean"}
INT32 = {"type": "integer", "minimum": -2**31, "maximum": 2**31 - 1}
STR_MAP = {"type": "object", "additionalProperties": STR}
QUANTITY = {"anyOf": [{"type": "integer"}, {
    "type": "string", "pattern": r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|"
                                 r"[eE][+-]?[0-9]+)?$"}]}
QUANTITY_MAP = {"type": "object", "additionalProperties": QUANTITY}
# KubeRay v1.7.0, config/crd/bases/ray.io_rayjobs.yaml, version v1 (served, stored): the RayJob
# fields and types, with core/v1 PodTemplateSpec where the manifest has one.
CONTAINER = obj({
    "name": STR, "image": STR, "workingDir": STR, "command": array(STR), "args": array(STR),
    "env": array(obj({"name": STR, "value": STR}, ("name",), "valueFrom")),
    "envFrom": array(obj({"secretRef": obj({"name": STR, "optional": BOOL})},
                         more="configMapRef prefix")),
    "ports": array(obj({"containerPort": INT32, "name": STR, "protocol": STR},
                       ("containerPort",), "hostIP hostPort")),
    "resources": obj({"limits": QUANTITY_MAP, "requests": QUANTITY_MAP}, more="claims"),
    "volumeMounts": array(obj({"name": STR, "mountPath": STR, "readOnly": BOOL},
                              ("mountPath", "name"),
                              "mountPropagation recursiveReadOnly subPath subPathExpr")),
}, ("name",), "imagePullPolicy lifecycle livenessProbe readinessProbe resizePolicy "
   "restartPolicy restartPolicyRules securityContext startupProbe stdin stdinOnce "
   "terminationMessagePath terminationMessagePolicy tty volumeDevices")
VOLUME = obj({"name": STR, "persistentVolumeClaim": obj({"claimName": STR, "readOnly": BOOL},
                                                         ("claimName",))}, ("name",),
             "awsElasticBlockStore azureDisk azureFile cephfs cinder configMap csi downwardAPI "
             "emptyDir ephemeral fc flexVolume flocker gcePersistentDisk gitRepo glusterfs "
             "hostPath image iscsi nfs photonPersistentDisk portworxVolume projected quobyte "
             "rbd scaleIO secret storageos vsphereVolume")
POD_TEMPLATE = obj({"metadata": {"type": "object"}, "spec": obj({
    "containers": {**array(CONTAINER), "minItems": 1}, "volumes": array(VOLUME),
}, ("containers",), "activeDeadlineSeconds affinity automountServiceAccountToken dnsConfig "
   "dnsPolicy enableServiceLinks ephemeralContainers hostAliases hostIPC hostNetwork hostPID "
   "hostUsers hostname hostnameOverride imagePullSecrets initContainers nodeName nodeSelector "
   "os overhead preemptionPolicy priority priorityClassName readinessGates resourceClaims "
   "resources restartPolicy runtimeClassName schedulerName schedulingGates schedulingGroup "
   "securityContext serviceAccount serviceAccountName setHostnameAsFQDN shareProcessNamespace "
   "subdomain terminationGracePeriodSeconds tolerations topologySpreadConstraints")})
RAY_CLUSTER_SPEC = obj({
    "rayVersion": STR, "enableInTreeAutoscaling": BOOL,
    "authOptions": obj({"mode": {"enum": ["disabled", "token"]}, "secretName": STR,
                        "enableK8sTokenAuth": BOOL}),
    "headGroupSpec": obj({"rayStartParams": STR_MAP, "template": POD_TEMPLATE}, ("template",),
                         "enableIngress headService ingressOptions labels resources "
                         "serviceType"),
    "workerGroupSpecs": array(obj({
        "groupName": STR, "replicas": INT32, "minReplicas": INT32, "maxReplicas": INT32,
        "rayStartParams": STR_MAP, "template": POD_TEMPLATE,
    }, ("groupName", "maxReplicas", "minReplicas", "template"),
        "idleTimeoutSeconds labels numOfHosts priority resources scaleStrategy suspend")),
}, ("headGroupSpec",), "autoscalerOptions gcsFaultToleranceOptions headServiceAnnotations "
   "historyServerOptions managedBy networkPolicy suspend tlsOptions upgradeStrategy")
RAYJOB = obj({
    "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"},
    "metadata": {"type": "object"},
    "spec": obj({
        "entrypoint": STR, "shutdownAfterJobFinishes": BOOL, "ttlSecondsAfterFinished": INT32,
        "submissionMode": STR, "rayClusterSpec": RAY_CLUSTER_SPEC,
    }, more="activeDeadlineSeconds backoffLimit clusterSelector deletionStrategy "
            "entrypointNumCpus entrypointNumGpus entrypointResources jobId managedBy metadata "
            "preRunningDeadlineSeconds runtimeEnvYAML submitterConfig submitterPodTemplate "
            "suspend"),
}, ("apiVersion", "kind", "spec"), "status")


def version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def test_kuberay_rayjob_matches_the_crd_of_kuberay_1_7():
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(RAYJOB).iter_errors(job)]
    assert not errors, "\n".join(errors)
    # KubeRay v1.7.0's own checks (controllers/ray/utils/validation.go) and behaviour
    name = job["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 47, name
    cluster = job["spec"]["rayClusterSpec"]
    auth = cluster.get("authOptions")
    if auth is not None and auth.get("mode", "token") == "token":
        assert version(cluster["rayVersion"]) >= (2, 52, 0)  # token auth needs Ray 2.52+
    for group in cluster["workerGroupSpecs"]:
        lo, hi = group["minReplicas"], group["maxReplicas"]
        assert 0 <= lo <= group.get("replicas", lo) <= hi, group["groupName"]
        if lo != hi:  # only the in-tree autoscaler moves a group between min and max
            assert cluster.get("enableInTreeAutoscaling") is True, (
                f"{group['groupName']}: maxReplicas {hi} does nothing without "
                "enableInTreeAutoscaling: true")


def test_kuberay_rayjob_runs_a_bundled_study():
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["study", "run"]
    overrides = {a.split("=", 1)[0]: a.split("=", 1)[1]
                 for a in argv[3:] if "=" in a and not a.startswith("--")}
    spec = load_spec(ROOT / argv[2], overrides=overrides)
    assert spec.gpu > 0
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == constraints()["ray"]
    gpu = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
