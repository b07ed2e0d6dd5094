"""Admission rules on the `autoscaling.knative.dev/*` annotations, as Knative words them.

The annotation table and its rules live in `ebb.common.knative_autoscaling`, shared with
the autoscaler; this module only places its problems at field paths.
"""

from __future__ import annotations

from collections.abc import Mapping

from ebb.common.knative_autoscaling import GROUP, canonicalize, check
from ebb.webhook.model import AdmissionSettings, FieldError

__all__ = ["canonicalize", "no_autoscaling_annotations", "validate_annotations"]


def no_autoscaling_annotations(annotations: Mapping[str, str], path: str) -> list[FieldError]:
    """Service, Configuration and Route metadata may not carry autoscaling annotations."""
    return [
        FieldError(
            path,
            f'invalid key name "{k}" '
            '(autoscaling annotations must be put under "spec.template.metadata.annotations" to work)',
        )
        for k in sorted(annotations)
        if k.startswith(GROUP)
    ]


def validate_annotations(
    annotations: Mapping[str, str], path: str, settings: AdmissionSettings
) -> list[FieldError]:
    """Every rule on the autoscaling annotations; `path` is the annotations map's path.

    A clash (`min-scale` and `minScale` both set) names both fields in one error.
    """
    checked = check(
        annotations,
        max_scale_limit=settings.max_scale_limit,
        allow_zero_initial_scale=settings.allow_zero_initial_scale,
    )
    return [
        FieldError(", ".join(f"{path}.{k}" for k in problem.keys), problem.message)
        for problem in checked.problems
    ]
