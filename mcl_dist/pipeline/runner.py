"""The whole MCL run as one list of resumable steps recorded in the manifest.

`Pipeline.plan()` is mcl_dist/steps/'s `plan_steps`: every step with the settings its result
depends on. Every rank walks the same list. A step that the manifest records as done with the same
fingerprint is skipped; one whose settings changed is refused; an interrupted one is redone
(training steps resume from their last checkpoint). Step bodies receive a RunContext
(mcl_dist/run/run_context.py), never the pipeline.
"""
from __future__ import annotations

import logging
import os
import shutil
from typing import Callable

from mcl_dist.config.load import check_k, check_world, load_config
from mcl_dist.config.origins import sources_of
from mcl_dist.config.schema import Config, ConfigError, default_run_dir, save_config
from mcl_dist.core import distributed as dist_utils
from mcl_dist.core import files
from mcl_dist.core import layout
from mcl_dist.data import data_report
from mcl_dist.data.dataset import TrainData
from mcl_dist.data.dataset_types import open_data
from mcl_dist.data.preflight import DataError
from mcl_dist.objectives import get_objective
from mcl_dist.run import guards, verify
from mcl_dist.run.manifest import Manifest, fingerprint
from mcl_dist.run.run_context import RunContext
from mcl_dist.steps import Step, plan_steps
from mcl_dist.steps.step import existing
from mcl_dist.synthetic.trifeature import ensure_demo_data

log = logging.getLogger("mcl_dist")


def resolve_data(cfg: Config) -> TrainData:
    """Make the synthetic demo data on first use (rank 0 only), then open the training data
    (data.dataset_type: the shard list expanded, or the CSV read and checked)."""
    if cfg.data.synthetic:
        def make() -> dict:
            return ensure_demo_data(cfg.data.synthetic_dir, n_train=cfg.data.synthetic_train,
                                    n_test=cfg.data.synthetic_test, seed=0,
                                    samples_per_shard=cfg.data.synthetic_samples_per_shard)

        paths = dist_utils.run_on_main("synthetic-data", make)  # the others wait outside collectives
        cfg.data.train_shards = cfg.data.train_shards or paths["train"]
        cfg.eval.test_shards = cfg.eval.test_shards or paths["test"]
        cfg.eval.mmvp_dir = cfg.eval.mmvp_dir or paths["mmvp"]
        cfg.eval.zero_shot_classes = cfg.eval.zero_shot_classes or paths.get("zero_shot", "")
        cfg.eval.label_fields = cfg.eval.label_fields or list(paths.get("label_fields", []))
    return open_data(cfg)


class Pipeline:
    def __init__(self, cfg: Config, run_dir: str, redo: str = ""):
        self.cfg, self.run_dir = cfg, run_dir
        self.info = dist_utils.info()
        self.data = resolve_data(cfg)
        self.manifest = Manifest(run_dir)
        self.data_fp = fingerprint(self.data.identity())
        self.ctx = RunContext(cfg, run_dir, self.info, self.data, self.data_fp)
        self.steps = self.plan()
        self.redo, self.redoing = redo, False
        names = [st.name for st in self.steps]
        if redo and redo not in names:
            raise ConfigError(f"--redo {redo}: no such step; the steps of this run are {', '.join(names)}")
        kill = cfg.debug.kill_at
        if kill.startswith("write:"):  # tests: die while writing this file (temp written, not renamed)
            files.kill_on_write(kill[len("write:"):], dist_utils.kill_job_now)

    def run_step(self, step: Step) -> dict:
        """Run the step's body unless the manifest has it done with these settings; all ranks agree."""
        name, settings = step.name, step.settings

        def fn() -> dict:
            return step.run(self.ctx)

        self.manifest = Manifest(self.run_dir)  # re-read: rank 0 may have written it
        if name == self.redo and not self.redoing:
            self.redoing = True
            if self.info.is_main:
                self._clear_from(name)
        if self.redoing:
            pass  # recomputed whatever the manifest says
        elif self.manifest.is_done(name, settings):
            verify.check_step(self.run_dir, name, self.manifest.step(name))  # its files are still what it wrote
            log.info("step %s: done already, skipped", name)
            return self.manifest.step(name)["outputs"]
        else:
            self.manifest.check_running(name, settings)
        if step.main_only:  # rank 0 alone; the others wait outside any collective
            return dist_utils.run_on_main(f"step-{name}", lambda: self._main_only(step, fn))
        dist_utils.barrier()
        if self.info.is_main:
            self.manifest.start(name, settings)
        log.info("step %s: running", name)
        outputs = fn() or {}
        if self.cfg.debug.kill_at == name:
            dist_utils.kill_launcher()
        dist_utils.barrier()
        if self.info.is_main:
            self.manifest.finish(name, outputs, files=self._written(step))
        dist_utils.barrier()
        return outputs

    def _written(self, step: Step) -> dict[str, dict]:
        """Sizes and checksums of the files the step wrote (its outputs() on disk), for the manifest."""
        return verify.record(self.run_dir, [p for pattern in step.outputs(self.run_dir, self.info.world_size)
                                            for p in existing(pattern)])

    def _main_only(self, step: Step, fn: Callable[[], dict]) -> dict:
        name = step.name
        self.manifest.start(name, step.settings)
        log.info("step %s: running (rank 0)", name)
        outputs = fn() or {}
        if self.cfg.debug.kill_at == name:
            dist_utils.kill_job_now()
        self.manifest.finish(name, outputs, files=self._written(step))
        return outputs

    def _clear_from(self, name: str) -> None:
        """--redo: forget the records and remove the outputs of `name` and every later step, all
        at once, so that a launch killed during the redo cannot reuse any of them."""
        names = [st.name for st in self.steps]
        for step in self.steps[names.index(name):]:
            for pattern in step.outputs(self.run_dir, self.info.world_size):
                for path in existing(pattern):
                    if path.endswith("/"):
                        shutil.rmtree(path)
                    else:
                        os.remove(path)
            if self.manifest.data["steps"].pop(step.name, None) is not None:
                self.manifest.data["order"].remove(step.name)
        self.manifest.save()
        log.info("step %s: recomputing it and every later step (--redo %s)", name, self.redo)

    def check_settings(self) -> None:
        """The manifest's refusals (a finished or interrupted step whose settings changed), made for
        every step before the launch writes anything: a refused launch leaves the run directory as
        it was, config.yaml included (it must keep saying what the results were trained with)."""
        names = [st.name for st in self.steps]
        for step in self.steps[:names.index(self.redo) if self.redo else len(names)]:  # --redo clears the rest
            if not self.manifest.is_done(step.name, step.settings):
                self.manifest.check_running(step.name, step.settings)

    def plan(self) -> list[Step]:
        """The step list (mcl_dist/steps/): what the run executes, --redo removes and --dry-run prints."""
        return plan_steps(self.cfg, self.info.world_size, self.data_fp)

    def preflight(self) -> None:
        """Refuse data that would hang, idle a rank or fail at a late step (mcl_dist/data/preflight.py)."""
        self.data.check_world(self.info.world_size, stage0_trains=not self.cfg.stages[0].pretrained)
        if not self.data.can_index():
            return  # remote shards cannot be indexed: streaming counts their bad samples
        result = dist_utils.run_on_main("preflight", self._check_data)
        if "error" in result:
            raise DataError(result["error"])

    def _check_data(self) -> dict:
        c = self.cfg
        try:
            index = self.ctx.load_index(progress=True)
            stats = self.data.check_samples(index, c.data, need_caption=get_objective(c).captions)
            check_k(c, stats["usable"], f"usable samples in the {self.data.unit}s", sources_of(c, "config"))
        except (ValueError, DataError) as e:  # duplicate keys come as ValueError from the index
            return {"error": str(e)}
        files.write_json(stats, layout.data_check_path(self.run_dir))
        data_report.record(self.run_dir, "preflight", data_report.counted(stats["reasons"]))
        if stats["bad"]:
            log.warning("data check: %d of %d samples unusable (%s); they are skipped and counted",
                        stats["bad"], stats["samples"], stats["reasons"])
        return {"stats": stats}

    def run(self) -> int:
        self.check_settings()
        self.preflight()
        if self.info.is_main:  # the launch is accepted: the resolved config it runs with
            save_config(self.cfg, layout.config_path(self.run_dir))
        for step in self.steps:
            self.run_step(step)
        if self.info.is_main:
            print(self.summary(), flush=True)
        dist_utils.barrier()
        return 0

    def summary(self) -> str:
        """The end-of-run lines, from the plan's steps."""
        by_kind = {st.kind: st for st in self.steps}
        model = by_kind["integrate"].outputs(self.run_dir, self.info.world_size)[0]
        # from the plan, as the model: the path the step returned already starts with run_dir, and
        # joining run_dir to it again printed runs/demo/runs/demo/report.md
        report = by_kind["report"].outputs(self.run_dir, self.info.world_size)[0]
        return (f"\nMCL run finished. Report: {report}\nIntegrated model: "
                f"{model} (load with mcl_dist.integration.load_model)")


def _lock_run_dir(run_dir: str) -> str:
    """Rank 0 takes the run directory's lock and sweeps what a killed launch left; all ranks agree."""
    lock, err = "", None
    if dist_utils.info().is_main:
        os.makedirs(run_dir, exist_ok=True)
        try:
            lock = guards.acquire(run_dir)
            guards.sweep(run_dir)
        except ConfigError as e:
            err = str(e)
    err = dist_utils.broadcast_object(err)
    if err:
        raise guards.RunDirBusy(err)
    dist_utils.setup_sync(layout.sync_dir(run_dir))
    return lock


def run_pipeline(config_path: str, run_dir: str | None, overrides: list[str], redo: str = "") -> int:
    cfg = load_config(config_path, overrides)
    info = dist_utils.init_distributed(timeout_min=cfg.dist.timeout_min)
    check_world(cfg, info.world_size, config_path)
    run_dir = run_dir or cfg.run_dir or default_run_dir(config_path)
    cfg.run_dir = run_dir
    lock, finished = "", False
    try:
        lock = _lock_run_dir(run_dir)
        pipe = Pipeline(cfg, run_dir, redo=redo)
        if info.is_main:
            log.info("run directory: %s (%s, world size %d, device %s)", run_dir, pipe.data.describe(),
                     info.world_size, info.device)
        code = pipe.run()
        finished = True
        return code
    finally:
        if lock:
            guards.release(lock)
        if finished or not dist_utils.is_distributed():
            # after a failure the launcher prints the error and ends the process (commands/pretrain.py `report`);
            # destroying the group first could wait on a rank still inside a collective (NCCL)
            dist_utils.destroy()
