"""The Provider port: how the replacement engine launches and terminates instances.

Every provider (local, docker, exec, aws-asg) implements :class:`Provider` and
passes the same contract suite (``tests/contract/test_provider_contract.py``).
The engine records a replacement durably *before* calling a provider, then
calls it with an idempotency key (one per taint or rollout step). Providers
therefore promise:

- ``launch`` is idempotent: a retried launch with the same key returns the
  instance the first call launched (found by its label or tag) instead of
  launching a second one;
- ``terminate`` is idempotent: terminating an instance that is already gone
  succeeds;
- each declares its :class:`ReplacementStrategy`: ``surge`` (a new instance is
  launched and must report conformant before the old one is terminated) or
  ``terminate_first`` (capacity is managed elsewhere, e.g. an Auto Scaling
  group relaunches whatever is terminated).

Errors are :class:`~controller.providers.errors.TemporaryProviderError`
(retry after ``delay``) or :class:`~controller.providers.errors.PermanentProviderError`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

LABEL_PREFIX = "io.corral."
LABEL_GROUP = "io.corral.group"
LABEL_INSTANCE = "io.corral.instance"
LABEL_IDEMPOTENCY_KEY = "io.corral.idempotency-key"
LABEL_IMAGE_DIGEST = "io.corral.image-digest"


class ReplacementStrategy(StrEnum):
    """Whether the old instance may go before its replacement is conformant."""

    SURGE = "surge"
    TERMINATE_FIRST = "terminate_first"


class InstanceState(StrEnum):
    """What a provider can say about an instance it launched (not corral's own states)."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a provider needs to launch one instance of a group."""

    group: str
    image_ref: str
    image_digest: str
    instance_id: str
    idempotency_key: str
    controller: str
    """``HOST:PORT`` of the controller the new instance's agent reports to."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels or tags to put on the instance (the ``io.corral.*`` ones are added)."""
    not_before: float | None = None
    """Unix time the replacement was recorded. A terminate-first provider adopts only
    capacity launched after it, never an instance that was already running."""

    def corral_labels(self) -> dict[str, str]:
        """The labels every provider puts on what it launches, plus ``labels``."""
        return {
            **self.labels,
            LABEL_GROUP: self.group,
            LABEL_INSTANCE: self.instance_id,
            LABEL_IDEMPOTENCY_KEY: self.idempotency_key,
            LABEL_IMAGE_DIGEST: self.image_digest,
        }


@dataclass(frozen=True)
class LaunchedInstance:
    """An instance as its provider sees it.

    ``instance_id`` is the id its agent reports with: usually the spec's, but a
    provider may assign its own (an EC2 instance id); empty while a
    terminate-first platform has not yet started the replacement (call
    ``launch`` again with the same key later to learn it).
    """

    instance_id: str
    group: str
    state: InstanceState
    image_digest: str = ""
    idempotency_key: str = ""
    provider_id: str = ""
    """The provider's own handle: a container id, an EC2 instance id, a process id."""
    root_path: str | None = None
    """Where the instance's root can be read from the host, when the provider knows."""
    labels: Mapping[str, str] = field(default_factory=dict)


class Provider(abc.ABC):
    """Launches and terminates the instances of groups. See the module docstring."""

    name: str
    replacement_strategy: ReplacementStrategy

    @abc.abstractmethod
    def launch(self, spec: LaunchSpec) -> LaunchedInstance:
        """Launch one instance, or return the one already launched for ``spec.idempotency_key``.

        Raises TemporaryProviderError when the platform is unreachable or busy,
        PermanentProviderError when the image is unknown or the request refused.
        """

    @abc.abstractmethod
    def terminate(self, instance_id: str) -> None:
        """Terminate an instance; an instance that is already gone is not an error.

        Raises TemporaryProviderError / PermanentProviderError as ``launch`` does.
        """

    @abc.abstractmethod
    def list(self, group: str) -> list[LaunchedInstance]:
        """Every live instance of ``group`` this provider knows, sorted by instance id.

        Raises TemporaryProviderError when the platform cannot be asked.
        """

    @abc.abstractmethod
    def describe(self, instance_id: str) -> LaunchedInstance | None:
        """One instance, or None when it does not exist (or no longer does).

        Raises TemporaryProviderError when the platform cannot be asked.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, most providers hold nothing
        """Release clients and connections. The provider is unusable afterwards."""
