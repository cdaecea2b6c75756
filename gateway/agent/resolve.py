"""Which provider and model a profile's turn uses (pure).

Resolution: the profile's own ``model``/``provider``, else ``model.default``/``model.provider``.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import ConfigError
from gateway.config import Config, Provider


@dataclass(frozen=True)
class Resolved:
    profile: str
    model: str
    provider: Provider


def resolve(config: Config, profile: str | None) -> Resolved:
    """Resolve ``profile`` (None -> "default") to a model and a configured provider.

    Raises ``ConfigError`` naming the config key to set: an unknown profile (listing the known
    ones), no model (``model.default``), no provider (``model.provider``) or a provider name
    without a ``providers.<name>.base_url``.
    """
    name = profile or "default"
    p = config.profiles.get(name)
    if p is None:
        known = ", ".join(sorted(config.profiles))
        raise ConfigError(f"unknown profile {name!r}; known profiles: {known}")
    model = p.model or config.model_default
    provider_name = p.provider or config.model_provider
    if not provider_name:
        raise ConfigError(
            "no provider configured: set model.provider and providers.<name>.base_url in config.yaml"
        )
    provider = config.providers.get(provider_name)
    if provider is None:
        raise ConfigError(
            f"provider {provider_name!r} is not configured: set "
            f"providers.{provider_name}.base_url in config.yaml"
        )
    if not model:
        raise ConfigError("no model configured: set model.default in config.yaml")
    return Resolved(name, model, provider)
