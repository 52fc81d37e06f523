"""The aws-asg provider: EC2 Auto Scaling groups, terminate-first.

Capacity belongs to the Auto Scaling group, so corral never launches: it
terminates a tainted instance with ``TerminateInstanceInAutoScalingGroup``
(``ShouldDecrementDesiredCapacity=False``) and the group launches a replacement
from its launch template. That template version must be pinned (a number):
with ``$Latest`` or ``$Default`` the replacement would run whatever was last
saved, not the image corral verified, so every call on such a group is refused.

``launch`` *adopts* the replacement: the group's newest instance not yet
carrying an ``io.corral.idempotency-key`` tag is tagged with the spec's
``io.corral.*`` tags and returned. With ``spec.not_before`` (when the engine
recorded the replacement), only instances launched in or after that second
qualify, so an instance that was already running is never taken for the
replacement. A retried launch finds the instance tagged with its key. While
the group has not started a replacement, launch returns a ``pending``
instance with an empty id; the engine calls it again later. Instance ids are
EC2 ids (the id the agent on the instance reports with).

Groups map to Auto Scaling group names through ``group_names`` (default: the
same name). Only this module imports boto3; AWS errors are mapped here:
throttling, contention and connection failures are temporary.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.exceptions

from controller.providers.base import (
    LABEL_GROUP,
    LABEL_IDEMPOTENCY_KEY,
    LABEL_IMAGE_DIGEST,
    LABEL_INSTANCE,
    LABEL_PREFIX,
    InstanceState,
    LaunchedInstance,
    LaunchSpec,
    Provider,
    ReplacementStrategy,
)
from controller.providers.errors import PermanentProviderError, TemporaryProviderError

_TEMPORARY_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "InternalFailure",
        "ResourceContention",
        "ScalingActivityInProgress",
    }
)
_UNPINNED = frozenset({"$Latest", "$Default", ""})


@dataclass(frozen=True)
class AwsAsgConfig:
    """Where the groups are and how to reach the API."""

    region: str = "us-east-1"
    endpoint_url: str | None = None
    """Only for tests against a local AWS API (moto); None uses AWS."""
    group_names: Mapping[str, str] = field(default_factory=dict)
    """corral group -> Auto Scaling group name (default: the same name)."""
    retry_delay: float = 30.0


def _pinned_problem(group: Mapping[str, Any]) -> str | None:
    """Why the group's launch template is not pinned, or None when it is."""
    if group.get("LaunchConfigurationName"):
        return None  # launch configurations are immutable
    template = group.get("LaunchTemplate")
    if template is None:
        mixed = group.get("MixedInstancesPolicy") or {}
        template = (mixed.get("LaunchTemplate") or {}).get("LaunchTemplateSpecification")
    if template is None:
        return "it has no launch template"
    version = str(template.get("Version", ""))
    if version in _UNPINNED:
        return f"its launch template version is {version or '$Default (unset)'}"
    return None


class AwsAsgProvider(Provider):
    """Auto Scaling groups; see the module docstring."""

    name = "aws-asg"
    replacement_strategy = ReplacementStrategy.TERMINATE_FIRST

    def __init__(
        self,
        config: AwsAsgConfig,
        *,
        autoscaling: Any | None = None,
        ec2: Any | None = None,
    ) -> None:
        self._config = config
        session = boto3.session.Session(region_name=config.region)
        self._autoscaling = autoscaling or session.client(
            "autoscaling", endpoint_url=config.endpoint_url
        )
        self._ec2 = ec2 or session.client("ec2", endpoint_url=config.endpoint_url)

    def _call(self, action: str, function: Any, **kwargs: Any) -> Any:
        try:
            return function(**kwargs)
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _TEMPORARY_CODES:
                raise TemporaryProviderError(
                    f"aws-asg: {action}: {exc}", delay=self._config.retry_delay, reason="aws_busy"
                ) from exc
            raise PermanentProviderError(f"aws-asg: {action}: {exc}", reason="aws_failed") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise TemporaryProviderError(
                f"aws-asg: {action}: {exc}",
                delay=self._config.retry_delay,
                reason="aws_unreachable",
            ) from exc

    def _asg_name(self, group: str) -> str:
        return self._config.group_names.get(group, group)

    def _group(self, asg_name: str) -> dict[str, Any]:
        answer = self._call(
            f"describe {asg_name}",
            self._autoscaling.describe_auto_scaling_groups,
            AutoScalingGroupNames=[asg_name],
        )
        groups = answer.get("AutoScalingGroups", [])
        if not groups:
            raise PermanentProviderError(
                f"aws-asg: Auto Scaling group {asg_name} does not exist", reason="unknown_group"
            )
        group: dict[str, Any] = groups[0]
        problem = _pinned_problem(group)
        if problem is not None:
            raise PermanentProviderError(
                f"aws-asg: refusing to replace instances of {asg_name}: {problem}; pin it to a "
                "numbered version (aws autoscaling update-auto-scaling-group "
                "--launch-template LaunchTemplateId=...,Version=N)",
                reason="unpinned_launch_template",
            )
        return group

    def _ec2_instances(self, instance_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not instance_ids:
            return {}
        answer = self._call(
            "describe instances", self._ec2.describe_instances, InstanceIds=instance_ids
        )
        return {
            instance["InstanceId"]: instance
            for reservation in answer.get("Reservations", [])
            for instance in reservation.get("Instances", [])
        }

    def _live(self, asg_name: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(autoscaling instance, EC2 instance) pairs of the group, not terminating."""
        members = [
            member
            for member in self._group(asg_name).get("Instances", [])
            if not str(member.get("LifecycleState", "")).startswith("Terminat")
        ]
        details = self._ec2_instances([m["InstanceId"] for m in members])
        return [(m, details.get(m["InstanceId"], {})) for m in members]

    @staticmethod
    def _view(
        group: str, member: Mapping[str, Any], details: Mapping[str, Any]
    ) -> LaunchedInstance:
        tags = {t["Key"]: t["Value"] for t in details.get("Tags", []) if "Key" in t}
        lifecycle = str(member.get("LifecycleState", ""))
        if lifecycle.startswith("Pending"):
            state = InstanceState.PENDING
        elif lifecycle == "InService":
            state = InstanceState.RUNNING
        else:
            state = InstanceState.STOPPED
        return LaunchedInstance(
            instance_id=member["InstanceId"],
            group=tags.get(LABEL_GROUP, group),
            state=state,
            image_digest=tags.get(LABEL_IMAGE_DIGEST, ""),
            idempotency_key=tags.get(LABEL_IDEMPOTENCY_KEY, ""),
            provider_id=member["InstanceId"],
            labels={k: v for k, v in tags.items() if k.startswith(LABEL_PREFIX)},
        )

    def launch(self, spec: LaunchSpec) -> LaunchedInstance:
        """Adopt the instance the group launched as the replacement (see the module docstring).

        Raises PermanentProviderError when the group does not exist or its launch
        template is not pinned; TemporaryProviderError when AWS is busy or unreachable.
        """
        live = self._live(self._asg_name(spec.group))
        for member, details in live:
            tags = {t["Key"]: t["Value"] for t in details.get("Tags", []) if "Key" in t}
            if tags.get(LABEL_IDEMPOTENCY_KEY) == spec.idempotency_key:
                return self._view(spec.group, member, details)
        candidates = []
        for member, details in live:
            keys = {t.get("Key") for t in details.get("Tags", [])}
            launched = details.get("LaunchTime")
            if LABEL_IDEMPOTENCY_KEY in keys:
                continue
            if spec.not_before is not None and (
                not isinstance(launched, dt.datetime)
                or launched.timestamp() < math.floor(spec.not_before)  # EC2 keeps whole seconds
            ):
                continue
            candidates.append((launched or dt.datetime.min, member["InstanceId"], member, details))
        if not candidates:
            return LaunchedInstance(
                instance_id="",
                group=spec.group,
                state=InstanceState.PENDING,
                image_digest=spec.image_digest,
                idempotency_key=spec.idempotency_key,
            )
        _, instance_id, member, details = max(candidates, key=lambda c: (c[0].timestamp(), c[1]))
        tags = {**spec.corral_labels(), LABEL_INSTANCE: instance_id}
        self._call(
            f"tag {instance_id}",
            self._ec2.create_tags,
            Resources=[instance_id],
            Tags=[{"Key": k, "Value": v} for k, v in sorted(tags.items())],
        )
        details = {**details, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        return self._view(spec.group, member, details)

    def terminate(self, instance_id: str) -> None:
        """Terminate without decrementing capacity, so the group relaunches; gone is fine.

        Raises PermanentProviderError when the instance's group is not pinned.
        """
        answer = self._call(
            f"describe {instance_id}",
            self._autoscaling.describe_auto_scaling_instances,
            InstanceIds=[instance_id],
        )
        members = answer.get("AutoScalingInstances", [])
        if not members or str(members[0].get("LifecycleState", "")).startswith("Terminat"):
            return
        self._group(members[0]["AutoScalingGroupName"])  # refuses an unpinned group
        self._call(
            f"terminate {instance_id}",
            self._autoscaling.terminate_instance_in_auto_scaling_group,
            InstanceId=instance_id,
            ShouldDecrementDesiredCapacity=False,
        )

    def list(self, group: str) -> list[LaunchedInstance]:
        """The group's instances that are not terminating, sorted by instance id."""
        views = [self._view(group, m, d) for m, d in self._live(self._asg_name(group))]
        return sorted(views, key=lambda view: view.instance_id)

    def describe(self, instance_id: str) -> LaunchedInstance | None:
        """The instance while it belongs to a group and is not terminating, else None."""
        if not instance_id.startswith("i-"):
            return None
        answer = self._call(
            f"describe {instance_id}",
            self._autoscaling.describe_auto_scaling_instances,
            InstanceIds=[instance_id],
        )
        members = answer.get("AutoScalingInstances", [])
        if not members or str(members[0].get("LifecycleState", "")).startswith("Terminat"):
            return None
        details = self._ec2_instances([instance_id]).get(instance_id, {})
        asg_name = members[0]["AutoScalingGroupName"]
        group = next((g for g, a in self._config.group_names.items() if a == asg_name), asg_name)
        return self._view(group, members[0], details)
