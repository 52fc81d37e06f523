"""The aws-asg provider against moto's server: pinning, adoption, terminate-first."""

from __future__ import annotations

import time
import uuid

import pytest

from controller.providers import LaunchSpec, PermanentProviderError, Provider, create_provider
from tests.fixtures.moto import MotoAws, moto_aws

__all__ = ["moto_aws"]

pytestmark = pytest.mark.aws


def spec(group: str, key: str, *, not_before: float | None = None) -> LaunchSpec:
    return LaunchSpec(
        group=group,
        image_ref="web@sha256:" + "e" * 64,
        image_digest="sha256:" + "e" * 64,
        instance_id="ignored-by-asg",
        idempotency_key=key,
        controller="127.0.0.1:1",
        not_before=not_before,
    )


def _group(aws: MotoAws, *, version: str = "1", desired: int = 1) -> str:
    name = f"asg-{uuid.uuid4().hex[:8]}"
    aws.create_group(name, version=version, desired=desired)
    return name


def _provider(aws: MotoAws) -> Provider:
    return create_provider("aws-asg", {"region": aws.region, "endpoint_url": aws.endpoint})


@pytest.mark.parametrize("version", ["$Latest", "$Default"])
def test_unpinned_launch_template_is_refused(moto_aws: MotoAws, version: str) -> None:
    group = _group(moto_aws, version=version)
    provider = _provider(moto_aws)
    with pytest.raises(PermanentProviderError, match=r"pin it to a numbered version"):
        provider.launch(spec(group, "k"))
    instance_id = moto_aws.client("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=[group]
    )["AutoScalingGroups"][0]["Instances"][0]["InstanceId"]
    with pytest.raises(PermanentProviderError, match=version.replace("$", r"\$")):
        provider.terminate(instance_id)
    assert provider.describe(instance_id) is not None  # nothing was terminated


def test_terminate_first_adopts_the_relaunched_instance(moto_aws: MotoAws) -> None:
    group = _group(moto_aws, desired=2)
    provider = _provider(moto_aws)
    assert provider.replacement_strategy == "terminate_first"
    before = {i.instance_id for i in provider.list(group)}
    old = sorted(before)[0]
    time.sleep(1.1)  # EC2 launch times have whole seconds: survivors must be older
    recorded = time.time()  # the engine records the replacement before terminating
    provider.terminate(old)
    after = {i.instance_id for i in provider.list(group)}
    assert old not in after and len(after) == 2  # capacity kept: the group relaunched
    (new,) = after - before
    adopted = provider.launch(spec(group, "taint-9", not_before=recorded))
    assert adopted.instance_id == new  # launched after the replacement began: not the survivor
    assert provider.launch(spec(group, "taint-9", not_before=recorded)).instance_id == new


def test_no_replacement_yet_gives_a_pending_marker(moto_aws: MotoAws) -> None:
    group = _group(moto_aws, desired=1)
    provider = _provider(moto_aws)
    provider.launch(spec(group, "first"))
    pending = provider.launch(spec(group, "second"))
    assert pending.instance_id == "" and pending.state == "pending"
    far_future = provider.launch(spec(group, "third", not_before=4_000_000_000.0))
    assert far_future.instance_id == ""


def test_unknown_group_is_permanent(moto_aws: MotoAws) -> None:
    with pytest.raises(PermanentProviderError, match="does not exist"):
        _provider(moto_aws).launch(spec("no-such-group", "k"))
