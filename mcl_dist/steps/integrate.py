"""integrate (rank 0): the stages' checkpoints concatenated into one model (mcl_dist/integrate.py);
writes `integrated/model.pt`."""
from __future__ import annotations

import os
from dataclasses import dataclass

from mcl_dist.files import load_torch
from mcl_dist.integrate import save_integrated
from mcl_dist.run_context import RunContext, integrated_path
from mcl_dist.steps.base import Step


@dataclass
class IntegrateStep(Step):
    kind = "integrate"
    main_only = True

    def result_settings(self) -> dict:
        # the default stays out of the settings: runs made before the choice keep their fingerprint
        how = self.cfg.model.integration
        return {"integration": how} if how != "normalized" else {}

    def outputs(self, run_dir: str, world: int) -> list[str]:
        return [integrated_path(run_dir)]

    def describe(self, world: int) -> str:
        if self.cfg.model.integration == "raw":
            return f"the {len(self.cfg.stages)} stages' raw features concatenated, then L2-normalised"
        return f"the {len(self.cfg.stages)} stages' features concatenated (each L2-normalised)"

    def run(self, ctx: RunContext) -> dict:
        names, states, config = [], [], None
        for s in range(len(ctx.cfg.stages)):
            ck = load_torch(os.path.join(ctx.stage_dir(s), "checkpoint.pt"))
            names.append(ck["model_name"])
            states.append(ck["state_dict"])
            config = ck.get("model_config", config)
        save_integrated(integrated_path(ctx.run_dir), names, states, None, config, ctx.cfg.model.integration)
        return {"model": integrated_path(ctx.run_dir)}
