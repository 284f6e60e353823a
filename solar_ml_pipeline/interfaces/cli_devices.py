"""`solar-ml device set` and `solar-ml device list`: where each tracker stands.

The site (latitude, longitude, altitude, capacity, timezone) drives the solar features, the
daylight metrics, the smart-persistence fallback and the simulator, so a tracker away from the
default site needs one. Thin: the checks and the merge live in `device_sites` (API-ready).
"""

from __future__ import annotations

import argparse
from typing import Any

from solar_ml_pipeline.config import Settings
from solar_ml_pipeline.interfaces import device_sites
from solar_ml_pipeline.interfaces.cli_common import EXIT_OK, add_json_flag, emit, with_store

SET_DESCRIPTION = (
    "Register where a tracker stands. On a device without a site, --lat and --lon are "
    "required; on an existing one only the fields given are updated, the others keep their "
    "values. Fields never set follow the defaults: SITE_LATITUDE, SITE_LONGITUDE, TIMEZONE, "
    "altitude 0 m, capacity 300 W. Retrains, predictions and `simulate` use the site from "
    "their next run on."
)


def _site_text(entry: dict[str, Any]) -> str:
    marked = set(entry["defaults"])

    def shown(name: str, text: str) -> str:
        return f"{text}*" if name in marked else text

    return (f"lat {shown('latitude', format(entry['latitude'], '.4f'))}, "
            f"lon {shown('longitude', format(entry['longitude'], '.4f'))}, "
            f"altitude {shown('altitude', format(entry['altitude'], 'g') + ' m')}, "
            f"capacity {shown('capacity_w', format(entry['capacity_w'], 'g') + ' W')}, "
            f"timezone {shown('timezone', entry['timezone'])}")


def cmd_device_set(args: argparse.Namespace, settings: Settings) -> int:
    fields = {"latitude": args.lat, "longitude": args.lon, "altitude": args.altitude,
              "capacity_w": args.capacity, "timezone": args.timezone}
    entry = with_store(settings, lambda store: device_sites.set_device_site(
        settings, store, args.device, **fields))
    action = "created" if entry["created"] else f"updated {', '.join(entry['updated'])}"
    emit(args, entry, lambda: (
        f"{entry['device_id']}: site {action}: {_site_text(entry)}"
        + (" (* = default)" if entry["defaults"] else "")))
    return EXIT_OK


def cmd_device_list(args: argparse.Namespace, settings: Settings) -> int:
    listing = with_store(settings, lambda store: device_sites.list_device_sites(settings, store))
    emit(args, listing, lambda: format_sites(listing))
    return EXIT_OK


def format_sites(listing: dict[str, Any]) -> str:
    lines = []
    for entry in listing["devices"]:
        if entry.get("problem"):
            lines.append(f"{entry['device_id']:<12} unusable site: {entry['problem']}: fix it "
                         f"with `solar-ml device set --device {entry['device_id']}`")
            continue
        lines.append(f"{entry['device_id']:<12} {_site_text(entry)}")
    if not lines:
        lines.append("no device has a site: register one with "
                     "`solar-ml device set --device D --lat LAT --lon LON`")
    elif any(entry["defaults"] for entry in listing["devices"]):
        lines.append("* = default, not set for the device")
    default = listing["default_site"]
    using = ", ".join(listing["default_site_devices"]) or "none"
    lines.append(f"default site (SITE_LATITUDE, SITE_LONGITUDE): lat {default['latitude']:.4f}, "
                 f"lon {default['longitude']:.4f}, timezone {default['timezone']}; "
                 f"devices with readings on it: {using}")
    return "\n".join(lines)


def add_commands(sub: Any) -> None:
    """Adds `device set` and `device list` to the `solar-ml` subcommands."""
    device = sub.add_parser("device", help="tracker sites: set, list")
    device_sub = device.add_subparsers(dest="device_command", required=True,
                                       parser_class=type(device))

    p = device_sub.add_parser(
        "set", help="create a device's site, or update only the given fields of an existing one",
        description=SET_DESCRIPTION)
    p.add_argument("--device", required=True)
    p.add_argument("--lat", type=float, help="latitude, degrees from -90 to 90 (north positive)")
    p.add_argument("--lon", type=float, help="longitude, degrees from -180 to 180 (east positive)")
    p.add_argument("--altitude", type=float, metavar="M", help="metres above sea level")
    p.add_argument("--capacity", type=float, metavar="W", help="peak power in watts, above 0")
    p.add_argument("--timezone", metavar="TZ", help="IANA time zone, e.g. Asia/Colombo")
    add_json_flag(p)
    p.set_defaults(handler=cmd_device_set)

    p = device_sub.add_parser(
        "list", help="every registered site, and the devices that use the default site")
    add_json_flag(p)
    p.set_defaults(handler=cmd_device_list)
