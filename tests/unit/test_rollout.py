"""Rollout and rollback move the desired image by digest; the plan moves the instances."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.domain.model import Group, GroupMode, InstanceState
from controller.domain.refs import InvalidReferenceError, UnpinnedReferenceError
from controller.domain.replacement import (
    ReplacementSettings,
    plan,
)
from controller.domain.replacement_actions import Kind, StartReplacement, Strategy
from controller.domain.rollout import (
    HISTORY_LIMIT,
    Change,
    DesiredImage,
    ImageNotRegisteredError,
    NothingToRollBackError,
    rollback,
    rollout,
)
from controller.domain.views import GroupView, InstanceView
from controller.errors import FailedPreconditionError, NotFoundError

V1 = "web@sha256:" + "1" * 64
V2 = "web@sha256:" + "2" * 64
V3 = "web@sha256:" + "3" * 64
REGISTERED = [V1, V2, V3, "ami-0123456789abcdef0"]


def at(image: str, *history: str, generation: int = 0) -> DesiredImage:
    return DesiredImage(group="web", image=image, history=history, generation=generation)


def test_rollout_sets_the_desired_image_and_remembers_the_previous_one() -> None:
    update = rollout(at(V1, generation=4), V2, REGISTERED)
    assert update.change is Change.ROLLOUT and update.changed
    assert (update.desired_image, update.previous_image) == (V2, V1)
    assert update.history == (V1,)
    assert update.generation == 5


def test_rollout_stores_the_canonical_reference() -> None:
    update = rollout(at(V1), "web:v2@sha256:" + "2" * 64, REGISTERED)
    assert update.desired_image == V2


def test_rollout_to_an_ami_id() -> None:
    assert rollout(at(V1), "ami-0123456789abcdef0", REGISTERED).desired_image == (
        "ami-0123456789abcdef0"
    )


@pytest.mark.parametrize("ref", ["web:latest", "web", "web:v2"])
def test_rollout_refuses_a_moving_reference_with_how_to_pin_it(ref: str) -> None:
    with pytest.raises(UnpinnedReferenceError, match=r"Pin it by digest: web@sha256:<64 hex>"):
        rollout(at(V1), ref, REGISTERED)


def test_rollout_refuses_an_invalid_reference() -> None:
    with pytest.raises(InvalidReferenceError, match="sha512"):
        rollout(at(V1), "web@sha512:" + "a" * 128, REGISTERED)


def test_rollout_refuses_an_unregistered_image() -> None:
    unknown = "web@sha256:" + "9" * 64
    with pytest.raises(ImageNotRegisteredError, match="corral image register") as caught:
        rollout(at(V1), unknown, REGISTERED)
    assert isinstance(caught.value, NotFoundError)


def test_rollout_names_the_registered_name_of_a_known_digest() -> None:
    with pytest.raises(ImageNotRegisteredError, match="registered as web@sha256:2"):
        rollout(at(V1), "api@sha256:" + "2" * 64, REGISTERED)


def test_rolling_out_the_desired_image_again_changes_nothing() -> None:
    update = rollout(at(V2, V1, generation=3), V2, REGISTERED)
    assert not update.changed
    assert (update.desired_image, update.history, update.generation) == (V2, (V1,), 3)


def test_rollback_pops_the_previous_image() -> None:
    update = rollback(at(V3, V1, V2, generation=7))
    assert update.change is Change.ROLLBACK and update.changed
    assert (update.desired_image, update.previous_image) == (V2, V3)
    assert update.history == (V1,)
    assert update.generation == 8


def test_rolling_back_twice_goes_two_images_back_never_to_the_bad_one() -> None:
    group = at(V1)
    for image in (V2, V3):
        update = rollout(group, image, REGISTERED)
        group = at(update.desired_image, *update.history, generation=update.generation)
    first = rollback(group)
    group = at(first.desired_image, *first.history, generation=first.generation)
    second = rollback(group)
    assert (first.desired_image, second.desired_image) == (V2, V1)
    with pytest.raises(NothingToRollBackError):
        rollback(at(second.desired_image, *second.history))


def test_rollback_without_history_is_refused_clearly() -> None:
    with pytest.raises(NothingToRollBackError, match="no previous image") as caught:
        rollback(at(V1))
    assert isinstance(caught.value, FailedPreconditionError)
    assert "corral rollout web" in str(caught.value)


def test_rollback_checks_the_image_is_still_registered_when_asked() -> None:
    with pytest.raises(ImageNotRegisteredError):
        rollback(at(V2, V1), registered_images=[V2])
    assert rollback(at(V2, V1), registered_images=REGISTERED).desired_image == V1


def test_history_is_bounded() -> None:
    group = at(V1, *([V2, V3] * HISTORY_LIMIT))
    assert len(rollout(group, V2, REGISTERED).history) == HISTORY_LIMIT


def test_desired_image_of_a_stored_group() -> None:
    stored = Group(name="web", desired_image_ref=V2, image_history=(V1,))
    assert DesiredImage.of(stored, generation=2) == at(V2, V1, generation=2)


def test_a_new_registered_image_never_rolls_out_by_itself() -> None:
    group = GroupView(
        name="web", mode=GroupMode.ENFORCE, desired_image=V1, strategy=Strategy.SURGE, size=10
    )
    fleet = [InstanceView(f"i{n}", InstanceState.CONFORMANT, V1) for n in range(10)]
    # Registering V2 changes nothing the plan reads: no action at all.
    assert plan(group, fleet, [], 1000.0, ReplacementSettings()) == []


def test_after_a_rollout_the_plan_replaces_within_budget_as_rollout() -> None:
    update = rollout(at(V1), V2, REGISTERED)
    group = GroupView(
        name="web",
        mode=GroupMode.ENFORCE,
        desired_image=update.desired_image,
        strategy=Strategy.SURGE,
        size=20,
        generation=update.generation,
    )
    fleet = [InstanceView(f"i{n:02}", InstanceState.CONFORMANT, V1) for n in range(20)]
    starts = [a for a in plan(group, fleet, [], 1000.0, ReplacementSettings()) if a]
    assert all(isinstance(a, StartReplacement) for a in starts)
    assert [
        (a.instance_id, a.kind, a.image_ref) for a in starts if isinstance(a, StartReplacement)
    ] == [
        ("i00", Kind.ROLLOUT, V2),
        ("i01", Kind.ROLLOUT, V2),
    ]


@given(st.lists(st.sampled_from(["rollout1", "rollout2", "rollout3", "rollback"]), max_size=40))
def test_any_sequence_keeps_a_registered_desired_image_and_bumps_generation(
    steps: list[str],
) -> None:
    group = at(V1)
    for step in steps:
        try:
            if step == "rollback":
                update = rollback(group, registered_images=REGISTERED)
            else:
                update = rollout(group, {"1": V1, "2": V2, "3": V3}[step[-1]], REGISTERED)
        except NothingToRollBackError:
            assert not group.history
            continue
        assert update.desired_image in REGISTERED
        assert update.generation == group.generation + (1 if update.changed else 0)
        if update.changed:
            assert update.desired_image != group.image
        group = at(update.desired_image, *update.history, generation=update.generation)
