"""Where a tracker stands and how big it is: the simulator's physical input and the solar
features' geometry, from the device's stored site with the settings' defaults for the rest."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.storage.base import SITE_FIELDS, SiteStore

# The numeric site fields: (lowest, highest, unit). `solar-ml device set` checks the same.
SITE_LIMITS = {
    "latitude": (-90.0, 90.0, "degrees"),
    "longitude": (-180.0, 180.0, "degrees"),
    "altitude": (-500.0, 9000.0, "metres"),
    "capacity_w": (1.0, 1e6, "watts"),
}


@dataclass(frozen=True)
class Site:
    """Where a tracker stands and how big it is; the simulator's only physical input."""

    latitude: float
    longitude: float
    altitude: float = 0.0
    capacity_w: float = 300.0
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        for name, (low, high, _) in SITE_LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, int | float) or not (low <= value <= high):
                raise ValueError(f"site {name}={value!r} is invalid: expected {low:g} to {high:g}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ValueError(
                f"site timezone={self.timezone!r} is invalid: expected an IANA zone such as UTC"
            ) from None


def site_from_settings(settings: Settings) -> Site:
    return Site(
        latitude=settings.site_latitude,
        longitude=settings.site_longitude,
        timezone=settings.timezone,
    )


DEFAULT_SITE = site_from_settings(Settings())


def site_from_record(settings: Settings, record: Mapping[str, Any] | None) -> Site:
    """A stored site record as a Site; fields it leaves unknown come from the settings."""
    site = site_from_settings(settings)
    known = {name: (record or {})[name] for name in SITE_FIELDS
             if (record or {}).get(name) is not None}
    return replace(site, **known) if known else site


def site_for_device(store: SiteStore, settings: Settings, device_id: str) -> Site:
    """The device's registered site; fields it leaves unknown come from the settings."""
    return site_from_record(settings, store.get_site(device_id))
