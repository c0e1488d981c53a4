"""Bad configs give errors that name the field and the fix."""
import pytest

from distill_core.config import Config, load_config, loads_config, resolve
from distill_core.errors import ConfigError


def test_defaults_follow_the_paper():
    cfg = resolve(Config())
    assert (cfg.method.anchor_step, cfg.student.num_steps) == (5, 4)
    assert cfg.method.fake_updates == 5 and cfg.optim.grad_clip == 1.0
    assert cfg.data.prompts and cfg.eval.prompts  # the built-in teacher's ten digits
    assert (cfg.method.renoise_shift, cfg.method.fake_t_shift, cfg.teacher.timestep_spacing) == (
        "shifted", "shifted", "trailing")  # the options added later default to what runs did before


def test_anchor_may_be_the_teachers_full_sample():
    assert resolve(loads_config("[method]\nanchor_step = 30")).method.anchor_step == 30  # k = N: t_k = 0


def test_toml_round_trip():
    cfg = resolve(Config())
    again = resolve(loads_config(cfg.to_toml()))
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("text, words", [
    ("[method]\nanchr_step = 3", ["method.anchr_step", "anchor_step"]),
    ("[methods]\nname = 'dmd'", ["methods"]),
    ("[method]\nanchor_step = 'five'", ["method.anchor_step", "whole number"]),
    ("[method\nx=1", ["not valid TOML"]),
    ("[method]\nanchor_step = 31", ["method.anchor_step", "teacher.num_steps"]),
    ("[method]\nrenoise_shift = 'none'", ["method.renoise_shift", "'unshifted'"]),
    ("[method]\nfake_t_shift = 'dmd2'", ["method.fake_t_shift", "'shifted'"]),
    ("[teacher]\ntimestep_spacing = 'linspace'", ["teacher.timestep_spacing", "'leading'"]),
    ("[teacher]\ntimestep_spacing = 'leading'", ["teacher.timestep_spacing", "sdxl"]),
    ("[method]\ndiversity_weight = -0.1", ["method.diversity_weight", ">= 0"]),
    ("[student]\nnum_steps = 1", ["student.num_steps", "at least 2"]),
    ("[method]\nname = 'dmd2'", ["method.name", "'dpdmd'"]),
    ("[run]\nmixed_precision = 'fp16'", ["fp16", "bf16"]),
    ("[teacher]\nfamily = 'sd3'", ["teacher.path"]),
    ("[teacher]\npath = '/no/such/folder'", ["teacher.path", "does not exist"]),
    ("[data]\nprompts_file = '/no/such/prompts.txt'", ["data.prompts_file"]),
    ("[eval]\nseeds = 1", ["eval.seeds", "pairwise"]),
    ("[method]\nname = 'dmd'\nbackprop = 'one_step'", ["method.backprop", "'dpdmd'"]),
    ("[method]\nname = 'decoupled_dmd'\nrefine = 'decoupled_dmd'", ["method.refine", "its own objective"]),
    ("[student]\nema_decay = 1.0", ["student.ema_decay"]),
    ("[student]\nshift = 0.0", ["student.shift", "positive"]),
    ("[run]\nkeep_checkpoints = 0", ["run.keep_checkpoints = 0 must be at least 1"]),
    ("[run]\noutput_dir = ''", ["run.output_dir is empty"]),
    ("[optim]\ngrad_clip = 0", ["optim.grad_clip = 0.0 must be positive"]),
])
def test_bad_values_name_the_field(text, words):
    with pytest.raises(ConfigError) as err:
        resolve(loads_config(text))
    for word in words:
        assert word in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_dmd_method_has_no_diversity_loss():
    cfg = resolve(loads_config("[method]\nname = 'dmd'"))
    assert cfg.lam == 0.0 and not cfg.detach_first


def test_prompts_file_is_read(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("seven\n\n# a comment\na handwritten 3\n")
    cfg = resolve(loads_config(f"[data]\nprompts_file = '{f}'"))
    assert cfg.data.prompts == ["seven", "a handwritten 3"]


def _enumerated_fields():
    import dataclasses

    from distill_core.config import choices

    for section in dataclasses.fields(Config):
        cls = type(getattr(Config(), section.name))
        for f in dataclasses.fields(cls):
            if choices(cls, f.name):
                yield section.name, f.name, choices(cls, f.name)


def test_enumerated_fields_are_checked_from_their_annotation():
    fields = list(_enumerated_fields())
    assert ("teacher", "family") in [(s, f) for s, f, _ in fields] and len(fields) >= 9
    for section, name, allowed in fields:
        with pytest.raises(ConfigError) as err:
            resolve(loads_config(f"[{section}]\n{name} = 'bogus'"))
        assert f"{section}.{name} = 'bogus' is not one of " + ", ".join(map(repr, allowed)) in str(err.value)
        with pytest.raises(ConfigError, match=f"{section}.{name} must be a string"):
            loads_config(f"[{section}]\n{name} = 3")


def test_sd3_and_sdxl_defaults_follow_the_paper(tmp_path):
    got = {}
    for family in ("sd3", "sdxl"):
        t = resolve(loads_config(f"[teacher]\nfamily = '{family}'\npath = '{tmp_path}'\n[data]\nprompts = ['a cat']"))
        got[family] = (t.teacher.guidance_scale, t.teacher.num_steps, t.optim.student_lr, t.optim.fake_lr,
                       t.data.batch_size, t.teacher.resolution, t.eval.features)
    assert got == {"sd3": (3.5, 30, 1e-5, 1e-5, 4, 1024, ""), "sdxl": (8.0, 50, 1e-5, 1e-5, 4, 1024, "")}
    assert (t.method.diversity_weight, t.run.max_steps) == (0.05, 400)  # lambda and budget: the paper's


def test_the_built_in_defaults_are_the_demos_measured_setting():
    """Issue 29: `dpdmd config`, the wizard and `dpdmd demo` start from one setting, the shapes teacher's (lambda
    0.5, 200 steps, and since issue 28 a fair DMD: the fake score at the student's lr); digits keep the paper's."""
    from distill_core.demo import demo_config

    shapes, demo = resolve(Config()), resolve(demo_config("runs/demo/dpdmd"))
    demo.run.output_dir = shapes.run.output_dir
    assert demo.to_dict() == shapes.to_dict()
    assert (shapes.method.diversity_weight, shapes.optim.fake_lr, shapes.optim.student_lr, shapes.run.max_steps) == (
        0.5, 1e-3, 1e-3, 200)
    digits = resolve(loads_config("[teacher]\nbuiltin = 'digits'"))
    assert (digits.method.diversity_weight, digits.optim.fake_lr, digits.run.max_steps) == (0.05, 1e-4, 400)


def test_the_old_name_eval_every_still_reads_as_diversity_every():
    """Configs and run folders written before the rename keep loading (and resolve to the same run)."""
    from distill_core.config import loads_config

    assert loads_config("[eval]\nevery = 7\n").eval.diversity_every == 7


def test_the_digits_example_config_trains_the_digits_teacher():
    """examples/configs/builtin_digits.toml: the digits student (the default teacher, and the examples', is shapes)."""
    from pathlib import Path

    from distill_core.builtin.kinds import data_module

    cfg = resolve(load_config(Path(__file__).resolve().parent.parent / "examples" / "configs" / "builtin_digits.toml"))
    assert cfg.teacher.builtin == "digits" and cfg.optim.student_lr == 1e-4 and cfg.data.batch_size == 64
    for prompt in cfg.data.prompts + cfg.eval.prompts:
        data_module("digits").parse_prompt(prompt)


def test_tensorboard_logging_is_an_option_only_where_tensorboard_is_installed():
    """Issue 29.7: accelerate's tracker, not a dependency: without the package the config says how to get it."""
    from distill_core.config import tensorboard_installed

    cfg = loads_config("[run]\ntensorboard = true")
    if tensorboard_installed():
        assert resolve(cfg).run.tensorboard
    else:
        with pytest.raises(ConfigError, match="run.tensorboard = true needs the tensorboard package"):
            resolve(cfg)
    assert not resolve(Config()).run.tensorboard
