"""fastlt.pipelines: plan-driven loaders (resident, ffcv, dali, torch) that turn StepPlans into Batches."""

from fastlt.pipelines.plan import Batch, PlanQueue, StepPlan, eval_plans, step_seed

__all__ = ["Batch", "PlanQueue", "StepPlan", "eval_plans", "step_seed"]
