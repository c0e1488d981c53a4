"""The tables written once (families, methods, memory presets, export formats), as each consumer shows them."""
from __future__ import annotations

import pytest

from distill_core import presets
from distill_core.cli import build_parser
from distill_core.config import Config, MethodSection, TeacherSection, choices, field_value, resolve
from distill_core.errors import ConfigError
from distill_core.export.formats import DTYPES, FORMATS
from trainer_ui import wizard
from trainer_ui.paths import Roots


def _family_config(family: str, folder) -> Config:
    cfg = Config()
    cfg.teacher.family = family
    if family != "builtin":
        cfg.teacher.path, cfg.data.prompts = str(folder), ["a cat"]
    return cfg


@pytest.mark.parametrize("family", choices(TeacherSection, "family"))
def test_the_wizard_starts_from_the_defaults_the_config_resolves(family, tmp_path):
    form, cfg = wizard.default_form(family), resolve(_family_config(family, tmp_path))
    assert (form.guidance_scale, form.teacher_steps, form.batch_size, form.diversity_weight, form.max_steps,
            form.fake_lr) == (cfg.teacher.guidance_scale, cfg.teacher.num_steps, cfg.data.batch_size,
                              cfg.method.diversity_weight, cfg.run.max_steps, cfg.optim.fake_lr)
    assert family in [value for _, value in wizard.FAMILIES]


def test_the_wizard_offers_the_planners_presets_and_writes_their_fields(tmp_path):
    roots = Roots(tmp_path / "runs", [])
    assert set(presets.PRESETS) < set(wizard.PRESETS)
    for name in presets.PRESETS:
        for method in choices(MethodSection, "name"):
            form = wizard.default_form()
            form.memory, form.method, form.run_name = name, method, "r"
            if presets.settings(name)["teacher.quantize"] != "none":  # the built-in teacher has no base to shrink
                with pytest.raises(ConfigError, match="teacher.quantize"):
                    wizard.build_config(form, roots)
                continue
            cfg = wizard.build_config(form, roots)
            expected = presets.settings(name)
            if method != "dpdmd":  # one-step backprop needs the detach
                expected["method.backprop"] = "all"
            assert {key: field_value(cfg, key) for key in expected} == expected, (name, method)
    cpu = wizard.build_config(wizard.default_form(), roots)  # the built-in teacher's default: the config's own
    assert {key: field_value(cpu, key) for key in presets.BASE} == {key: field_value(Config(), key)
                                                                     for key in presets.BASE}
    assert cpu.run.mixed_precision == "no" and cpu.teacher.dtype == "float32"


def test_the_cli_offers_every_value_the_core_accepts():
    parser = build_parser({})
    for family in choices(TeacherSection, "family"):
        assert parser.parse_args(["config", "--family", family]).family == family
    for fmt in FORMATS:
        for dtype in DTYPES:
            args = parser.parse_args(["export", "run", "--format", fmt, "--dtype", dtype])
            assert (args.format, args.dtype) == (fmt, dtype)
    for bad in (["demo", "--method", "dmd2"], ["config", "--family", "flux"], ["export", "run", "--format", "ckpt"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_the_nodes_default_schedules_are_the_teachers():
    """A builtin student's ComfyUI sigmas without metadata equal what the built-in teacher trains on."""
    from comfy_pack import pack_module

    from distill_core.teachers.builtin import BuiltinTeacher

    compute = pack_module("nodes.compute")
    assert compute.family_schedule("builtin").describe() == BuiltinTeacher().schedule.describe()
