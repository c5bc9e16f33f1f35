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

    def outputs(self, run_dir: str, world: int) -> list[str]:
        return [integrated_path(run_dir)]

    def describe(self, world: int) -> str:
        return f"the {len(self.cfg.stages)} stages' features concatenated (each L2-normalised)"

    def run(self, ctx: RunContext) -> dict:
        names, states, config = [], [], None
        for s in range(len(ctx.cfg.stages)):
            ck = load_torch(os.path.join(ctx.stage_dir(s), "checkpoint.pt"))
            names.append(ck["model_name"])
            states.append(ck["state_dict"])
            config = ck.get("model_config", config)
        save_integrated(integrated_path(ctx.run_dir), names, states, None, config)
        return {"model": integrated_path(ctx.run_dir)}
