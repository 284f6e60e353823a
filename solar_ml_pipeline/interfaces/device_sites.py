"""Device sites for `solar-ml device set/list` (and the API when it takes them): checked
field by field so a bad value is named, merged over what the store holds, and refused whole
when the merged site could not be simulated or featurised."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from solar_ml_pipeline.config import Settings, validate_device_id
from solar_ml_pipeline.interfaces.operations import InvalidRequest, json_ready
from solar_ml_pipeline.storage import Store


def _site_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"invalid {name} {value!r}: expected a finite number")
    return float(value)


def validate_site_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The given site fields (None = not given), checked; the message names the field."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from solar_ml_pipeline.readings.sites import SITE_LIMITS
    from solar_ml_pipeline.storage.base import SITE_FIELDS

    unknown = sorted(set(fields) - set(SITE_FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown site field(s) {', '.join(unknown)}: expected "
                             f"{', '.join(SITE_FIELDS)}")
    checked: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if name == "timezone":
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError, TypeError):
                raise InvalidRequest(f"unknown timezone {str(value)[:80]!r}: expected an IANA "
                                     "zone such as Asia/Colombo or UTC") from None
            checked[name] = value
            continue
        number = _site_number(name, value)
        low, high, unit = SITE_LIMITS[name]
        if not low <= number <= high:
            raise InvalidRequest(f"invalid {name} {number:g}: expected {unit} from "
                                 f"{low:g} to {high:g}")
        checked[name] = number
    return checked


def _site_entry(settings: Settings, record: Mapping[str, Any] | None,
                device_id: str) -> dict[str, Any]:
    """The site a device is trained and simulated with, and which fields are defaults."""
    from dataclasses import asdict

    from solar_ml_pipeline.readings.sites import site_from_record
    from solar_ml_pipeline.storage.base import SITE_FIELDS

    site = asdict(site_from_record(settings, record))
    return {"device_id": device_id, **{name: site[name] for name in SITE_FIELDS},
            "defaults": [name for name in SITE_FIELDS if (record or {}).get(name) is None]}


def set_device_site(settings: Settings, store: Store, device_id: str,
                    **fields: Any) -> dict[str, Any]:
    """Create the device's site, or update only the given fields of an existing one.

    A new site needs latitude and longitude; fields never set follow the defaults
    (SITE_LATITUDE, SITE_LONGITUDE, TIMEZONE, the simulator's altitude and capacity).
    """
    validate_device_id(device_id)
    given = validate_site_fields(fields)
    if not given:
        raise InvalidRequest("nothing to set: give at least one of latitude, longitude, "
                             "altitude, capacity_w, timezone")
    existing = store.get_site(device_id)
    if existing is None and not {"latitude", "longitude"} <= set(given):
        raise InvalidRequest(f"device {device_id} has no site yet: give both latitude and "
                             "longitude")
    merged = {**(existing or {}), **given, "device_id": device_id}
    try:
        entry = _site_entry(settings, merged, device_id)  # the whole site must be usable
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    store.set_site(device_id, merged)
    return json_ready({**entry, "created": existing is None, "updated": sorted(given)})


def list_device_sites(settings: Settings, store: Store) -> dict[str, Any]:
    """Every registered site, the default site, and the devices with readings that use it."""
    from dataclasses import asdict

    from solar_ml_pipeline.config import is_valid_device_id
    from solar_ml_pipeline.readings.sites import site_from_settings

    sites = []
    for record in store.list_sites():
        try:
            sites.append(_site_entry(settings, record, record["device_id"]))
        except ValueError as exc:  # written around `device set`: shown, so it can be fixed
            sites.append({**record, "defaults": [], "problem": str(exc)})
    registered = {entry["device_id"] for entry in sites}
    defaulted = [d for d in store.list_devices() if is_valid_device_id(d) and d not in registered]
    return json_ready({"devices": sites, "default_site": asdict(site_from_settings(settings)),
                       "default_site_devices": defaulted})
