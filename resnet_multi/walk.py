"""Former home of the plan walk, kept so that ``resnet_multi.walk`` imports keep working: the walk
is ``resnet_multi.ir.walk``."""

from .ir.walk import run_part, run_plan, run_stage_via_container, stage_container

__all__ = ["run_part", "run_plan", "run_stage_via_container", "stage_container"]
