"""Cluster.outlier_detection protobuf -> model.OutlierDetection (Envoy's defaults and checks)."""

from __future__ import annotations

from google.protobuf.message import Message

from config import model
from config.translate_base import TranslatorBase, seconds, wrapped

# Every OutlierDetection field but ``monitors`` (extension monitors: not implemented).
SUPPORTED = (
    "consecutive_5xx", "interval", "base_ejection_time", "max_ejection_percent",
    "enforcing_consecutive_5xx", "enforcing_success_rate", "success_rate_minimum_hosts",
    "success_rate_request_volume", "success_rate_stdev_factor", "consecutive_gateway_failure",
    "enforcing_consecutive_gateway_failure", "split_external_local_origin_errors",
    "consecutive_local_origin_failure", "enforcing_consecutive_local_origin_failure",
    "enforcing_local_origin_success_rate", "failure_percentage_threshold",
    "enforcing_failure_percentage", "enforcing_failure_percentage_local_origin",
    "failure_percentage_minimum_hosts", "failure_percentage_request_volume", "max_ejection_time",
    "max_ejection_time_jitter", "successful_active_health_check_uneject_host",
    "always_eject_one_host",
)

# Fields the proto constrains to [0, 100] (validate.rules uint32 lte: 100).
PERCENTS = (
    "max_ejection_percent", "enforcing_consecutive_5xx", "enforcing_success_rate",
    "enforcing_consecutive_gateway_failure", "enforcing_consecutive_local_origin_failure",
    "enforcing_local_origin_success_rate", "failure_percentage_threshold",
    "enforcing_failure_percentage", "enforcing_failure_percentage_local_origin",
)

# Plain integers (UInt32Value), taken as they are.
COUNTS = (
    "consecutive_5xx", "success_rate_minimum_hosts", "success_rate_request_volume",
    "success_rate_stdev_factor", "consecutive_gateway_failure", "consecutive_local_origin_failure",
    "failure_percentage_minimum_hosts", "failure_percentage_request_volume",
)


def milliseconds(duration: Message) -> int:
    """A Duration as Envoy's PROTOBUF_GET_MS_OR_DEFAULT reads it: whole milliseconds."""
    return duration.seconds * 1000 + duration.nanos // 1_000_000


def outlier_detection(t: TranslatorBase, od: Message, path: str) -> model.OutlierDetection:
    """The cluster's ``outlier_detection`` (``path`` names it), errors reported on ``t``."""
    t.only(od, path, SUPPORTED)
    defaults = model.OutlierDetection()
    values: dict[str, object] = {}
    for name in PERCENTS + COUNTS:
        value = wrapped(od, name, getattr(defaults, name))
        if name in PERCENTS and value > 100:
            t.error(f"{path}.{name}", "value must be less than or equal to 100")
        values[name] = value
    # Durations: Envoy counts them in whole milliseconds.
    ms: dict[str, int] = {}
    for name in ("interval", "base_ejection_time", "max_ejection_time", "max_ejection_time_jitter"):
        if od.HasField(name):
            duration = getattr(od, name)
            if name != "max_ejection_time_jitter" and seconds(duration) <= 0:
                t.error(f"{path}.{name}", "value must be greater than 0s")
            ms[name] = milliseconds(duration)
    interval = ms.get("interval", 10_000)
    base = ms.get("base_ejection_time", 30_000)
    # Unset max_ejection_time: 300 s, or base_ejection_time when that is larger (Envoy).
    maximum = ms.get("max_ejection_time", max(300_000, base))
    if maximum < base:
        t.error(f"{path}.max_ejection_time",
                "outlier detector's max_ejection_time cannot be smaller than base_ejection_time")
    return model.OutlierDetection(
        interval=interval / 1000, base_ejection_time=base / 1000, max_ejection_time=maximum / 1000,
        max_ejection_time_jitter=ms.get("max_ejection_time_jitter", 0) / 1000,
        split_external_local_origin_errors=od.split_external_local_origin_errors,
        successful_active_health_check_uneject_host=wrapped(
            od, "successful_active_health_check_uneject_host", True),
        always_eject_one_host=wrapped(od, "always_eject_one_host", False),
        **values)  # type: ignore[arg-type]
