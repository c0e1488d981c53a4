"""Who imports whom: the core never pulls in the UI, the CLI finds `dpdmd ui` in package metadata, and the
light modules (config, CLI, the UI's launcher) stay free of torch. Each check runs in a fresh interpreter."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python(code: str, *, path: list[Path] = (), cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter that imports this checkout (and ``path``) first."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [ROOT, *path]))}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def loaded_after(statements: str, modules: tuple[str, ...]) -> list[str]:
    out = python(f"import sys\n{statements}\nprint(' '.join(m for m in {modules!r} if m in sys.modules))")
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_the_core_and_its_cli_import_no_ui_and_no_torch():
    core = "import distill_core, distill_core.config, distill_core.cli\ndistill_core.cli.build_parser()"
    assert loaded_after(core, ("gradio", "trainer_ui", "torch")) == []
    # the full --help (which lists the registered commands) imports none of them either
    out = python("import sys, distill_core.cli as c\ntry:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
                 "print([m for m in ('gradio', 'trainer_ui', 'torch') if m in sys.modules])")
    assert out.returncode == 0 and out.stdout.strip().endswith("[]"), out.stdout + out.stderr


def test_the_launcher_compares_configs_without_torch(tmp_path):
    teacher = tmp_path / "sd3"
    teacher.mkdir()
    code = f"""
from distill_core.config import Config, resolve
from trainer_ui import launcher
cfg = Config()
cfg.teacher.family, cfg.teacher.path, cfg.data.prompts = "sd3", {str(teacher)!r}, ["a cat"]
cfg.run.output_dir = {str(tmp_path / "run")!r}
(launcher.Path(cfg.run.output_dir)).mkdir()
(launcher.Path(cfg.run.output_dir) / "config.toml").write_text(resolve(cfg).to_toml())
cfg.run.max_steps = 7  # resumable: the same run
assert "already exists" in launcher.existing_run_note(resolve(cfg))
"""
    assert loaded_after(code, ("torch", "accelerate")) == []


def test_train_entry_point_does_not_go_through_the_cli(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[method]\nanchor_step = 99\n")
    out = python(f"import sys, distill_core.train as t\nrc = t.main([{str(bad)!r}])\n"
                 "print('cli' if 'distill_core.cli' in sys.modules else 'no cli', rc)")
    assert out.stdout.split() == ["no", "cli", "2"], out.stdout + out.stderr
    assert "error: method.anchor_step (k) = 99" in out.stderr and "Traceback" not in out.stderr


def test_commands_registered_in_package_metadata_are_handed_their_arguments(tmp_path):
    """Any installed distribution can add a `dpdmd` command, as the UI adds `ui` (found, not imported, by --help)."""
    dist = tmp_path / "hello_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hello-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[dpdmd.commands]\nhello = hello_plugin:main\n")
    (tmp_path / "hello_plugin.py").write_text("def main(argv):\n    print('hello got', argv)\n    return 3\n")
    run = python("import sys, distill_core.cli as c\nsys.exit(c.main(['hello', '--x', 'y']))", path=[tmp_path])
    assert run.returncode == 3 and "hello got ['--x', 'y']" in run.stdout, run.stdout + run.stderr
    listed = python("import sys, distill_core.cli as c\ntry:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
                    "print('imported' if 'hello_plugin' in sys.modules else 'not imported')", path=[tmp_path])
    assert "hello" in listed.stdout and "hello_plugin:main" in listed.stdout, listed.stdout + listed.stderr
    assert listed.stdout.split()[-2:] == ["not", "imported"]


def test_pyproject_registers_the_ui_command():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    target = project["entry-points"]["dpdmd.commands"]["ui"]
    from trainer_ui.cli import main as ui_main

    assert EntryPoint("ui", target, "dpdmd.commands").load() is ui_main


def test_the_ui_reads_toml_on_python_3_10(tmp_path):
    """No tomllib before 3.11: the UI goes through the core's loader, which falls back to tomli."""
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.toml").write_text("[method]\nname = 'dmd'\ndiversity_weight = 0.05\n")
    code = f"""
import sys, tomllib
sys.modules["tomli"], sys.modules["tomllib"] = tomllib, None  # as on 3.10 with the tomli backport
from pathlib import Path
from distill_core.errors import ConfigError
from trainer_ui import runs, wizard
from trainer_ui.paths import Roots
assert runs.summarize(Path({str(tmp_path / "old")!r})).lam == 0.0  # plain DMD: no diversity loss
form, roots = wizard.default_form(), Roots(Path({str(tmp_path)!r}), [])
form.extra_toml = "[eval]\\nseeds = 3"
assert wizard.form_to_dict(form, roots)["eval"]["seeds"] == 3
form.extra_toml = "[eval"
try:
    wizard.form_to_dict(form, roots)
except ConfigError as e:
    assert "the advanced TOML box is not valid TOML" in str(e), e
else:
    raise AssertionError("bad TOML accepted")
"""
    out = python(code)
    assert out.returncode == 0, out.stderr


def test_the_ui_without_gradio_says_how_to_install_it(tmp_path):
    out = python("import sys\nsys.modules['gradio'] = None  # the [ui] extra is not installed\n"
                 f"from trainer_ui.cli import main\nsys.exit(main(['--runs-dir', {str(tmp_path / 'runs')!r}]))")
    assert out.returncode == 2 and "pip install 'dp-dmd-studio[ui]'" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_a_family_is_named_only_in_its_row_and_its_teacher_module():
    """What a diffusers family is (LoRA layers and file keys, original layer names, ModelSpec id, pipeline class)
    lives on its teacher class: no other module of the core, the UI or the nodes branches on its name."""
    import ast

    from distill_core.families import FAMILIES

    names = set(FAMILIES) - {"builtin"}
    allowed = {ROOT / "distill_core" / "families.py", ROOT / "distill_core" / "reference_configs.py"}
    found = []
    for package in ("distill_core", "trainer_ui", "nodes"):
        for path in (ROOT / package).rglob("*.py"):
            if path in allowed or path.parent == ROOT / "distill_core" / "teachers":
                continue
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}" for node in ast.walk(ast.parse(
                path.read_text(encoding="utf-8"))) if isinstance(node, ast.Constant) and node.value in names]
    assert found == []
