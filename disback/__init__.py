"""DisBack (Distribution Backtracking Distillation), an independent reproduction.

Stage 1 ``record_degradation`` records a degradation path from the teacher toward the initial one-step
generator; stage 2 ``backtrack`` distils along that path reversed. ``distill`` is the same loop with a
constant teacher target (the Diff-Instruct / DMD / DMD2 / SiD baselines).
"""
from . import config, data, diffusion, metrics, teachers
from .config import DegradeConfig, DistillConfig, TeacherConfig
from .degrade import record_degradation
from .distill import DistillResult, backtrack, distill
from .path import DegradationPath, TargetSchedule

__all__ = ["config", "data", "diffusion", "metrics", "teachers", "TeacherConfig", "DegradeConfig", "DistillConfig",
           "record_degradation", "backtrack", "distill", "DistillResult", "DegradationPath", "TargetSchedule"]
