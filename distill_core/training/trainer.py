"""The DP-DMD training loop: two networks, two optimisers, two time scales, on accelerate.

One *step* is ``method.fake_updates`` fake-score updates on fresh detached
student samples, then one student update (DMD on the steps after the detach,
plus lambda times the diversity loss on the first step). All randomness comes
from generators saved in every checkpoint, so a resumed run equals an
uninterrupted one.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from contextlib import closing, contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .. import progress as phases
from ..config import METHODS, Config, config_differences, extreme_values, field_value, load_run_config, resolve
from ..errors import CheckpointError, ConfigError, DiskFull, RunRefused, TrainingDiverged
from ..integrity import first_nonfinite
from ..method import DPDMD, TeacherSplit, dpdmd_student_loss, fake_update_loss, first_step_target, one_step_pick
from ..runfolder import RunFolder
from ..teachers import load_teacher_with_prompts
from ..teachers.base import cond_to
from . import checkpoint as ckpt
from .adapters import base_dtype, is_lora_state, merged_state_dict, trainable_state
from .memory import batch_fits
from .ema import StudentEMA
from .fp8 import full_precision_base, is_quantized
from .lora import AdapterView, average_gradients, trainable_parameters, training
from .recorder import Recorder, RunRecorder
from .sharding import is_sharded, shard
from .train_state import full_state, load_network_state, load_optimizer_state, network_state, optimizer_state

if TYPE_CHECKING:
    from ..evaluation.compare import Reference


def make_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cpu = cfg.run.device == "cpu" or (cfg.run.device == "auto" and not torch.cuda.is_available())
    if cfg.run.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device = 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
    # run.tensorboard: accelerate's own tracker, writing <run>/tensorboard (resolve() checked it is installed)
    tracking = {"log_with": "tensorboard", "project_dir": str(Path(cfg.run.output_dir))} if cfg.run.tensorboard else {}
    try:
        return Accelerator(mixed_precision=cfg.run.mixed_precision, cpu=cpu, **tracking)
    except ValueError:  # an earlier Accelerator in this process had other settings
        AcceleratorState._reset_state(True)
        return Accelerator(mixed_precision=cfg.run.mixed_precision, cpu=cpu, **tracking)


class Trainer:
    """Owns the networks, optimisers, generators and run folder of one run."""

    def __init__(self, cfg: Config, *, progress: bool = True, restart: bool = False) -> None:
        self.cfg = resolve(cfg)
        self.restart = restart  # start over from step 0, deleting the folder's checkpoints
        self.acc = make_accelerator(self.cfg)
        self.is_main = self.acc.is_main_process
        self.run = RunFolder(Path(self.cfg.run.output_dir))
        self.progress = progress and self.is_main
        self._stop = threading.Event()
        self.stop_signal: int | None = None  # the signal that asked for the stop (the CLI exits 128 + it)
        self.reference: Reference | None = None  # the teacher's measurement for the finish, if a caller took it

        c = self.cfg
        # prompts first: the text encoders come and go before the denoiser and the trainable copies take memory
        with self.reporting():
            self.teacher, self.bank = load_teacher_with_prompts(c, self.acc.device, c.data.prompts)
        sched, m = self.teacher.schedule, c.method
        self.anchor_target = first_step_target(sched, m.anchor_target)
        self.student_levels = self.teacher.student_levels(c.student.num_steps, c.student.shift)
        self.teacher_levels = self.teacher.teacher_levels(c.teacher.num_steps)
        self.method = DPDMD(
            sched, self.student_levels, self.teacher_levels, diversity_weight=c.lam, anchor_step=m.anchor_step,
            anchor_target=self.anchor_target, detach_first=c.detach_first, backprop=m.backprop,
            renoise_low=m.renoise_min, renoise_high=m.renoise_max, renoise_per_sample=m.renoise_per == "sample",
            renoise_shifted=m.renoise_shift == "shifted", normalizer=m.dmd_normalizer,
            fake_t_shifted=m.fake_t_shift == "shifted", objective=c.objective)

        self.sharded = is_sharded(self.acc)  # FSDP: each process holds a shard of the student and the fake score
        student, fake = self._trainable_networks()
        if self.sharded:  # before the optimisers, which then step the shards
            student, fake = (shard(net, self.acc.device) for net in (student, fake))
        o = c.optim

        def adamw(net, lr):
            return torch.optim.AdamW(trainable_parameters(net), lr=lr,
                                     betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)

        opt_s, opt_f = adamw(student, o.student_lr), adamw(fake, o.fake_lr)
        if isinstance(student, AdapterView):  # one base under both: no DDP wrapper each (see _backward)
            self.student, self.fake = (self.acc.prepare_model(net, evaluation_mode=True) for net in (student, fake))
            self.opt_s, self.opt_f = self.acc.prepare(opt_s, opt_f)
        elif self.sharded:  # FSDP averages the gradients itself (a reduce-scatter for DDP's all-reduce);
            self.student, self.fake = student, fake  # prepare() would refuse optimisers without their model
            self.opt_s, self.opt_f = (self.acc.prepare_optimizer(opt) for opt in (opt_s, opt_f))
        else:
            self.student, self.fake, self.opt_s, self.opt_f = self.acc.prepare(student, fake, opt_s, opt_f)
        self.lr_schedules = [warmup_schedule(opt, o.warmup_steps) for opt in (self.opt_s, self.opt_f)]
        self.ema = None
        if c.student.ema_decay:
            if self.sharded:
                raise ConfigError("student.ema_decay is not available under FSDP (each process holds a shard); "
                                  "set it to 0 or train with DDP")
            self.ema = StudentEMA(self.acc.unwrap_model(self.student), c.student.ema_decay)
        self.generators = {"data": torch.Generator(), "noise": torch.Generator()}
        self._seed_generators(self.acc.process_index, 0)
        self.step = 0
        self.opened = False  # the run folder records this process's attempt (a refused start leaves it alone)

    def reporting(self):
        """Where this process's long phases show: the terminal (with progress) and, on the main process, the run's
        status.json (distill_core.progress)."""
        return phases.reporting(self.run if self.is_main else None, self.progress)

    def _trainable_networks(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The student and the fake score: copies of the teacher (LoRA-wrapped when student.lora_rank), or two
        adapters on the teacher's own network (student.lora_mode 'shared')."""
        c = self.cfg
        if c.student.lora_rank:
            from .lora import FAKE, STUDENT, AdapterView, add_lora, lora_mode

            dtype, fp8 = base_dtype(c), c.teacher.quantize == "fp8"
            if lora_mode(c, self.sharded) == "shared":
                base = self.teacher.network  # in the base dtype already (lora_mode checks it)
                add_lora(base, c.student.lora_rank, self.teacher.family, dtype, c.run.seed, names=(STUDENT, FAKE), fp8=fp8)
                nets = [base]
                views = AdapterView(base, STUDENT), AdapterView(base, FAKE)
            else:
                nets = [add_lora(self.teacher.make_trainable_copy(), c.student.lora_rank, self.teacher.family, dtype,
                                 c.run.seed, fp8=fp8) for _ in range(2)]
                views = nets[0], nets[1]
        else:
            nets = [self.teacher.make_trainable_copy() for _ in range(2)]
            views = nets[0], nets[1]
        for view, field in zip(views, ("student.init_lora", "fake.init_lora")):
            path = field_value(c, field)
            if path:
                from .lora import init_from_lora
                init_from_lora(view, path, self.teacher.family, field)
        if c.student.gradient_checkpointing:
            for net in nets:
                if hasattr(net, "enable_gradient_checkpointing"):
                    net.enable_gradient_checkpointing()
        return views

    # ---- randomness ------------------------------------------------------------------------
    def _seed_generators(self, rank: int, step: int) -> None:
        base = self.cfg.run.seed * 1_000_003 + rank * 7_919 + step
        self.generators["data"].manual_seed(base * 2 + 1)
        self.generators["noise"].manual_seed(base * 2 + 2)

    def _batch(self) -> tuple[dict, dict, torch.Tensor]:
        b = self.cfg.data.batch_size
        idx = torch.randint(0, len(self.bank), (b,), generator=self.generators["data"])
        dev = self.acc.device
        cond, null = cond_to(self.bank.get(idx), dev), cond_to(self.bank.null(b), dev)
        z = torch.randn((b, *self.teacher.latent_shape()), generator=self.generators["noise"]).to(dev)
        return cond, null, z

    # ---- predictors ----------------------------------------------------------------------------
    def _pred(self, net, cond):
        return lambda x, lv: self.teacher.predict(net, x, lv, cond)

    def _real(self, cond, null):
        w = self.cfg.teacher.guidance_scale
        return lambda x, lv: self.teacher.predict_cfg(self.teacher.network, x, lv, cond, null, w)

    def _split(self, cond, null) -> TeacherSplit:
        """The teacher with the prompt and without, unguided (Decoupled-DMD's two terms)."""
        net = self.teacher.network
        return TeacherSplit(self._pred(net, cond), self._pred(net, null), self.cfg.teacher.guidance_scale)

    # ---- the two updates -------------------------------------------------------------------------
    def fake_update(self) -> float:
        """One fake-score step on its loss (method.fake_update_loss) for a fresh batch."""
        cond, _, z = self._batch()
        with self.acc.autocast():
            loss = fake_update_loss(self.method, self._pred(self.student, cond), self._pred(self.fake, cond), z,
                                    self.generators["noise"])
        self._check(loss, "fake-score")
        self._backward(loss, self.fake)
        self.acc.clip_grad_norm_(self.fake.parameters(), self.cfg.optim.grad_clip)
        self.opt_f.step()
        self.opt_f.zero_grad(set_to_none=True)
        return loss.item()

    def student_update(self) -> dict:
        """One student step on Eq. 8 (method.dpdmd_student_loss) for a fresh batch, then the EMA."""
        cond, null, z = self._batch()
        pick = one_step_pick(self.method, self.generators["data"])
        with self.acc.autocast():
            out = dpdmd_student_loss(self.method, self._pred(self.student, cond), self._real(cond, null),
                                     self._pred(self.fake, cond), z, self.generators["noise"], pick,
                                     self._split(cond, null) if self.method.objective == "decoupled_dmd" else None)
        self._check(out.loss, "student")
        self._backward(out.loss, self.student)
        self.acc.clip_grad_norm_(self.student.parameters(), self.cfg.optim.grad_clip)
        self.opt_s.step()
        self.opt_s.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.acc.unwrap_model(self.student))
        return {"loss": out.loss.item(), "loss_dmd": out.dmd.item(), "loss_div": out.div.item(),
                "dmd_grad": out.dmd_grad}

    def _backward(self, loss: torch.Tensor, net) -> None:
        """Backward through ``net``; a shared base's view with its adapter on, its gradients then averaged over
        the processes as DDP averages a network of its own."""
        inner = self.acc.unwrap_model(net)
        with training(inner):
            self.acc.backward(loss)
        average_gradients(inner, self.acc.num_processes)

    def train_step(self) -> dict[str, float]:
        """One step: method.fake_updates fake-score updates, then one student update."""
        t0 = time.perf_counter()
        fake_losses = [self.fake_update() for _ in range(self.cfg.method.fake_updates)]
        logs = self.student_update()
        for schedule in self.lr_schedules:
            schedule.step()
        self.step += 1
        logs.update(loss_fake=sum(fake_losses) / len(fake_losses), sec_per_step=round(time.perf_counter() - t0, 4))
        return logs

    def sampling_student(self) -> torch.nn.Module:
        """The network that is sampled, evaluated and exported: the EMA when there is one."""
        return self.ema.model if self.ema is not None else self.acc.unwrap_model(self.student)

    def _check(self, loss: torch.Tensor, which: str) -> None:
        if not torch.isfinite(loss):
            raise TrainingDiverged(self._diverged(f"the {which} loss became {loss.item()} at step {self.step + 1}"))

    def _diverged(self, what: str) -> str:
        """What went wrong, the checkpoint a resume continues from (only finite ones are written), the fix."""
        last = ckpt.latest(self.run.checkpoints)
        where = (f"{last.name} is the newest checkpoint and is kept" if last else "no checkpoint was written yet")
        extreme = [v for v in extreme_values(self.cfg) if not v.startswith("optim.")]
        if extreme:  # a value far from its default is the likelier cause; changing it makes another run
            return (f"{what}; {where}. This config has extreme values: {', '.join(extreme)}; bring them nearer "
                    "the default in a new run (run.branch_from = a checkpoint of this one keeps its progress)")
        return (f"{what}; {where}. Lower optim.student_lr / optim.fake_lr in the config (or use "
                "run.mixed_precision = 'no') and run the same command again: it "
                + ("resumes from that checkpoint with the new rates." if last else "starts over."))

    # ---- checkpoints -----------------------------------------------------------------------------------
    def save_checkpoint(self, recorder: Recorder) -> None:
        """Write every state to the staging folder, then mark it complete; refuses non-finite states."""
        acc = self.acc
        tmp = ckpt.staging_dir(self.run.checkpoints, self.step)
        acc.wait_for_everyone()
        states = {"student": network_state(acc, self.student), "fake": network_state(acc, self.fake),
                  "optim_student": optimizer_state(self.student, self.opt_s),
                  "optim_fake": optimizer_state(self.fake, self.opt_f)}  # collectives: every rank takes part
        if self.ema is not None:
            states["ema"] = network_state(acc, self.ema.model)
        files = {name: ckpt.optimizer_tensors(sd) if name.startswith("optim") else (sd, None)
                 for name, sd in states.items()} if self.is_main else {}  # full states live on the main process
        broken = [name for name, (tensors, _) in files.items() if first_nonfinite(tensors.items())]
        if self._agree(bool(broken)):
            raise TrainingDiverged(self._diverged(f"the {' and '.join(broken) or 'replicated'} weights became "
                                                  f"non-finite by step {self.step}"))
        try:
            for name, (tensors, meta) in files.items():
                ckpt.save_tensors(tmp / f"{name}.safetensors", tensors, meta)
            ckpt.save_tensors(tmp / f"rng_rank{acc.process_index}.safetensors", ckpt.rng_tensors(self.generators))
        except DiskFull as e:
            shutil.rmtree(tmp, ignore_errors=True)
            last = ckpt.list_complete(self.run.checkpoints)
            kept = f"the previous checkpoint {last[-1].name} is intact" if last else "no checkpoint was written yet"
            raise DiskFull(f"{e}; {kept}: free some space and run the same command again to resume") from None
        acc.wait_for_everyone()
        if self.is_main:
            state = {"step": self.step, "world_size": acc.num_processes, "config": self.cfg.to_dict(),
                     "lr_schedules": [s.state_dict() for s in self.lr_schedules]}
            final = ckpt.finalize(self.run.checkpoints, self.step, state, self.cfg.run.keep_checkpoints)
            recorder.checkpoint(self.step, str(final.relative_to(self.run.root)))
        acc.wait_for_everyone()

    def load_checkpoint(self, folder: Path) -> None:
        acc = self.acc
        state = ckpt.read_state(folder)
        from safetensors.torch import load_file
        for net, opt, name in ((self.student, self.opt_s, "student"), (self.fake, self.opt_f, "fake")):
            load_network_state(acc, net, load_file(str(folder / f"{name}.safetensors")))
            load_optimizer_state(net, opt, ckpt.optimizer_state_from(folder / f"optim_{name}.safetensors"))
        if self.ema is not None:
            ema = folder / "ema.safetensors"
            if not ema.exists():
                raise ConfigError(f"{folder.name} has no EMA weights: the run was started with student.ema_decay = 0; "
                                  "keep it at 0 to resume this run")
            load_network_state(acc, self.ema.model, load_file(str(ema)))
        self.step = int(state["step"])
        rates = (self.cfg.optim.student_lr, self.cfg.optim.fake_lr)  # a resume may change them
        for schedule, saved, lr in zip(self.lr_schedules, state.get("lr_schedules") or [None] * 2, rates):
            restore_schedule(schedule, saved, self.step, lr)
        rng = folder / f"rng_rank{acc.process_index}.safetensors"
        if rng.exists() and state.get("world_size") == acc.num_processes:
            ckpt.restore_rng(rng, self.generators)
        else:  # a different number of processes: continue, deterministically but not bit-exactly
            self._seed_generators(acc.process_index, self.step)
            if self.is_main:
                print(f"note: {folder.name} was written by {state.get('world_size')} processes, resuming on "
                      f"{acc.num_processes}; training continues but is not bit-identical to an unbroken run")

    def try_resume(self) -> bool:
        """Resume from the newest complete checkpoint of this run folder (or run.branch_from's), if there is one."""
        if self.run.config_path.exists():
            old = resolve(load_run_config(self.run.config_path))
            diff = config_differences(old, self.cfg)
            untrained = self.run.read_status().get("step") == 0 and not ckpt.list_complete(self.run.checkpoints)
            if diff and not untrained:  # a start that failed before step 1 (a batch too large) holds nothing
                raise RunRefused(f"run.output_dir {str(self.run.root)!r} already holds a run with another config "
                                 f"(differs in {', '.join(diff)}); choose a new run.output_dir (set run.branch_from "
                                 "to one of this run's checkpoints to continue from it), or delete that folder to "
                                 "start over")
        if self.restart:
            if self.is_main:
                ckpt.discard(self.run.checkpoints)
            return False
        last = ckpt.resume_point(self.run.checkpoints, report=partial(print, file=sys.stderr) if self.is_main else None)
        # every process looks before the main one branches: a late one would find the branch, skip _branch's
        # barrier and hang the run
        self.acc.wait_for_everyone()
        if last is None and self.cfg.run.branch_from:
            last = self._branch(Path(self.cfg.run.branch_from).expanduser())
        if last is None:
            return False
        self.load_checkpoint(last)
        return True

    def _branch(self, source: Path) -> Path:
        """Copy another run's checkpoint into this run: it continues from that step under this config."""
        if not ckpt.is_complete(source):
            raise ConfigError(f"run.branch_from {str(source)!r} is not a complete checkpoint folder; give one of "
                              "another run's checkpoints/step_XXXXXXXX folders")
        target = self.run.checkpoints / source.name
        if self.is_main:
            staging = self.run.checkpoints / f".{source.name}.branch"
            shutil.rmtree(staging, ignore_errors=True)
            try:
                ckpt.copy_listed(source, staging)
            except CheckpointError as e:
                shutil.rmtree(staging, ignore_errors=True)
                raise ConfigError(f"run.branch_from {str(source)!r}: {e}; give a checkpoint the trainer wrote") from None
            os.replace(staging, target)
            print(f"branching from {source} (step {ckpt.read_state(source)['step']})", file=sys.stderr)
        self.acc.wait_for_everyone()
        return target

    # ---- the loop --------------------------------------------------------------------------------------
    @contextmanager
    def _signals(self):
        """SIGINT / SIGTERM ask for a graceful stop (finish the step, checkpoint, exit)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self._stop.is_set():  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            self.stop_signal = signum
            self._stop.set()
            if self.is_main:
                print("\nstopping after this step (a checkpoint will be written); press Ctrl-C again to abort",
                      file=sys.stderr)

        for s in previous:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def request_stop(self) -> None:
        self._stop.set()

    def _agree(self, flag: bool) -> bool:
        """Agree on a control decision across processes (any rank asking wins)."""
        if self.acc.num_processes == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.acc.device)
        return bool(self.acc.reduce(t, reduction="sum").item() > 0)

    def fit(self, *, finish: bool = False) -> str:
        """Train to run.max_steps (resuming if possible); returns 'finished' or 'stopped'.

        ``finish``: then export, evaluate and report (the run reads 'finishing' meanwhile). The run folder is
        locked throughout: another process training in it is refused (RunRefused).
        """
        with self.run.locked() if self.is_main else nullcontext(), self.reporting():
            state = self._fit(finish)
            if finish and state == "finished" and self.is_main:
                from .finish import finish_run
                finish_run(self)  # a kill here leaves 'finishing', which reads as died
                self.run.write_status("finished", message="")
        return state

    def _fit(self, finish_after: bool) -> str:
        """The loop: a train step, what the run folder keeps of it, the checkpoint cadence."""
        from tqdm import tqdm

        c = self.cfg
        recorder = self._open()
        state = "finished"
        # time left from the running median of step times (StepClock), not tqdm's rate, which a slow first step
        # (warm-up) skews for many steps
        bar = tqdm(total=c.run.max_steps, initial=self.step, desc="distilling", unit="step",
                   disable=not self.progress, dynamic_ncols=True,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        clock, first = phases.StepClock(), True
        with self._signals(), closing(bar):  # closed before an error line, which then stands on its own line
            while self.step < c.run.max_steps:
                if self._agree(self._stop.is_set() or recorder.requested("stop")):
                    state = "stopped"
                    break
                with batch_fits(c.data.batch_size, self.acc.device) if first else nullcontext():
                    logs = self.train_step()
                first = False
                clock.add(logs["sec_per_step"])
                bar.update(1)
                recorder.after_step(self.step, logs, clock)
                if c.run.tensorboard:
                    measured = {} if recorder.diversity is None else {"diversity": recorder.diversity}
                    self.acc.log({**logs, **measured}, step=self.step)
                bar.set_postfix(self._postfix(logs, recorder, clock.left(c.run.max_steps - self.step)), refresh=False)
                every = c.run.checkpoint_every
                if self._agree(recorder.requested("save")) or (every and self.step % every == 0):
                    self.save_checkpoint(recorder)
        if state == "finished" and not finish_after:  # trained, but no student, metrics or report yet
            state = "stopped"
        self._close(recorder, "finishing" if finish_after and state == "finished" else state)
        return state

    def _postfix(self, logs: dict, recorder: Recorder, left: float | None) -> dict[str, str]:
        """The bar's numbers: the losses the method trains on (plain DMD has no diversity loss), the diversity once
        an evaluation has measured it (a 0 before then would read as none), the time left once it is known."""
        from tqdm import tqdm

        out = {"dmd": f"{logs['loss_dmd']:.4f}", "fake": f"{logs['loss_fake']:.4f}"}
        if METHODS[self.cfg.method.name].diversity:
            out["div_loss"] = f"{logs['loss_div']:.4f}"
        if recorder.diversity is not None:
            out["diversity"] = f"{recorder.diversity:.4f}"
        out["left"] = "measuring" if left is None else tqdm.format_interval(left)
        return out

    def _open(self) -> Recorder:
        """Create or resume the run folder; the recorder that writes it (silent off the main process)."""
        if self.is_main:
            self.run.create()
        self.acc.wait_for_everyone()
        resumed = self.try_resume()
        if self.cfg.run.tensorboard:
            self.acc.init_trackers("tensorboard")  # <run>/tensorboard; only the main process writes
        if not self.is_main:
            return Recorder()
        from ..evaluation.evaluate import load_extractor
        from ..evaluation.snapshots import Snapshots

        c = self.cfg
        extractor = load_extractor(c.eval.features, c.teacher.builtin) if c.eval.features else None
        recorder = RunRecorder(c, self.run, Snapshots(c, self.teacher, extractor, self.acc.device),
                               self.sampling_student, can_sample=not self.sharded, processes=self.acc.num_processes)
        self.opened = True
        recorder.open(self.step, resumed, {
            "teacher": self.teacher.describe(), "method": c.method.name, "refine": c.objective,
            "student_levels": self.student_levels,
            "anchor_level": self.teacher_levels[c.method.anchor_step]})
        return recorder

    def _close(self, recorder: Recorder, state: str) -> None:
        """Check replicas agree, make sure the last step is checkpointed, record the final state."""
        if self.acc.num_processes > 1 and not self.sharded:  # FSDP ranks hold different shards by design
            diff = self._replica_difference()
            if self.is_main:
                self.run.append_event("replicas", step=self.step, processes=self.acc.num_processes,
                                      max_difference=diff)
        if ckpt.step_dir_name(self.step) not in {d.name for d in ckpt.list_complete(self.run.checkpoints)}:
            self.save_checkpoint(recorder)
        recorder.close(state, self.step)
        if self.cfg.run.tensorboard:
            self.acc.end_training()
        self.acc.wait_for_everyone()

    def _replica_difference(self) -> float:
        """Largest difference between processes of per-tensor fingerprints of both networks (0 = in sync)."""
        prints = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().norm()])
                              for net in (self.student, self.fake) for p in net.parameters()]).flatten()
        gathered = self.acc.gather(prints.to(self.acc.device).unsqueeze(0)).cpu()
        return float((gathered - gathered[0]).abs().max())

    def student_state_dict(self) -> dict:
        """The student's weights in the teacher's layout (LoRA adapters merged)."""
        state = self.ema.model.state_dict() if self.ema is not None else full_state(self.acc, self.student)
        if is_lora_state(state) and is_quantized(self.teacher.network):  # the fp8 base only trains: merge into
            state = {**full_precision_base(self.teacher, base_dtype(self.cfg)), **trainable_state(state)}  # the full one
        return merged_state_dict(state)


def warmup_schedule(optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear learning-rate warm-up over ``warmup_steps`` student steps (0 = constant), stepped once per step."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper would step it once per process
    return torch.optim.lr_scheduler.LambdaLR(inner, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0)


def restore_schedule(schedule: torch.optim.lr_scheduler.LambdaLR, saved: dict | None, step: int,
                     base_lr: float) -> None:
    """Continue a schedule at ``step`` with the configured base rate (checkpoints before it was saved: from the step)."""
    if saved is not None:
        schedule.load_state_dict(saved)
    schedule.last_epoch = step
    schedule.base_lrs = [base_lr] * len(schedule.base_lrs)
    for group, factor in zip(schedule.optimizer.param_groups, schedule.lr_lambdas):
        group["initial_lr"], group["lr"] = base_lr, base_lr * factor(step)


def train(cfg: Config, *, progress: bool = True, finish: bool = True, restart: bool = False) -> Path:
    """Run (or resume) a distillation; then export, evaluate and report. Returns the run folder."""
    return run_trainer(Trainer(cfg, progress=progress, restart=restart), finish=finish)


def run_trainer(trainer: Trainer, *, finish: bool = True) -> Path:
    """Fit a built trainer, recording a failure in the run folder; then finish the run."""
    finish = finish and not trainer.sharded  # an FSDP student samples only with every process
    try:
        state = trainer.fit(finish=finish)
    except TrainingDiverged as e:
        if trainer.is_main:
            trainer.run.write_status("failed", message=str(e))
            trainer.run.append_event("failed", step=trainer.step, message=str(e))
        raise
    except BaseException as e:
        if trainer.is_main and trainer.opened:  # a refused start leaves the folder's status alone
            trainer.run.write_status("failed", message=f"{type(e).__name__}: {e}")
        raise
    if trainer.sharded and trainer.is_main and state == "finished":
        print(f"FSDP run: export and evaluate after training with `dpdmd export {trainer.run.root}` and "
              "`dpdmd evaluate` (an FSDP student samples only with every process)", file=sys.stderr)
    trainer.acc.wait_for_everyone()
    return trainer.run.root
