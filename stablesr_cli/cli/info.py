"""`stablesr info`: what a bug report needs: versions, devices, and which weights are ready.

The report is this command's output, so it goes to standard output (`stablesr info > report.txt`);
`--json` gives the same facts as one JSON object for scripts.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .. import __version__
from .console import error_line, make_console, print_line


@dataclass
class DeviceReport:
    torch: str
    cuda_available: bool
    cuda_version: str | None
    devices: list[dict[str, Any]] = field(default_factory=list)
    default_device: str = "cpu"
    default_dtype: str = "fp32"
    default_dtype_reason: str = ""
    threads: int = 1


@dataclass
class WeightsReport:
    name: str
    description: str
    ready: bool
    files: list[dict[str, Any]]
    licence: str


def _device_report() -> DeviceReport:
    import torch

    from ..runtime import auto_dtype, resolve_device

    devices = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append(
                {"device": f"cuda:{index}", "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                 "capability": f"{props.major}.{props.minor}", "bf16": torch.cuda.is_bf16_supported()}
            )  # fmt: skip
    default = resolve_device("auto")
    dtype, reason = auto_dtype(default)
    return DeviceReport(
        torch=torch.__version__,
        cuda_available=torch.cuda.is_available(),
        cuda_version=torch.version.cuda,
        devices=devices,
        default_device=str(default),
        default_dtype={torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype],
        default_dtype_reason=reason,
        threads=torch.get_num_threads(),
    )


def _weights_report() -> list[WeightsReport]:
    from .. import store

    reports = []
    for status in store.model_status():
        files = [
            {
                "file": f.spec.filename,
                "downloaded": str(f.downloaded) if f.downloaded else None,
                "converted": str(f.converted) if f.converted else None,
                "verified_by": f.verified_by,
                "damaged": f.problem,
            }
            for f in status.files
        ]
        reports.append(WeightsReport(status.spec.name, status.spec.facts.summary, status.ready, files, status.spec.licence))
    return reports


def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Show the version, PyTorch and device details, and which weights are present and verified."""
    from .. import store
    from ..errors import StableSRError

    stderr = make_console()
    try:
        devices = _device_report()
        weights = _weights_report()
    except StableSRError as error:
        print_line(stderr, error_line("", str(error)))
        raise typer.Exit(1) from None
    facts = {
        "stablesr": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": devices.__dict__,
        "cache_dir": str(store.cache_dir()),
        "hub_cache_dir": str(store.hub_cache_dir()),
        "offline": store.is_offline(),
        "models": [w.__dict__ for w in weights],
    }
    if as_json:
        sys.stdout.write(json.dumps(facts, ensure_ascii=False) + "\n")
        return
    _print_tables(Console(highlight=False), facts, devices, weights)


def _print_tables(console: Console, facts: dict[str, Any], devices: DeviceReport, weights: list[WeightsReport]) -> None:
    about = Table.grid(padding=(0, 2))
    about.add_row("stablesr", facts["stablesr"])
    about.add_row("python", f"{facts['python']} on {facts['platform']}")
    about.add_row("torch", f"{devices.torch} ({devices.threads} CPU threads)")
    about.add_row("CUDA", f"{devices.cuda_version} available" if devices.cuda_available else "not available")
    for device in devices.devices:
        about.add_row(device["device"], f"{device['name']}, {device['memory_gib']} GiB, compute {device['capability']}")
    about.add_row("default", f"--device auto = {devices.default_device}, --dtype auto = {devices.default_dtype} ({devices.default_dtype_reason})")
    about.add_row("weights cache", facts["cache_dir"] + ("  (offline)" if facts["offline"] else ""))
    about.add_row("download cache", facts["hub_cache_dir"])
    console.print(about)

    table = Table("model", "status", "files", title="weights", title_justify="left")
    for model in weights:
        table.add_row(model.name, _model_state(model), "\n".join(_file_state(f) for f in model.files))
    console.print(table)
    if not any(model.ready for model in weights):
        console.print("No model is ready yet; fetch one with: stablesr weights download turbo", markup=False)


def _model_state(model: WeightsReport) -> str:
    if model.ready:
        return "ready"
    return "damaged" if any(f["damaged"] for f in model.files) else "missing"


_VERIFIED_BY = {
    "manifest": "SHA-256 matches the manifest",
    "hub": "SHA-256 matches the Hub's published hash",
}


def _file_state(file: dict[str, Any]) -> str:
    if file["damaged"]:
        return f"{file['file']}: converted copy damaged ({file['damaged']}); `stablesr weights download` converts it again"
    if file["converted"]:
        checked = _VERIFIED_BY.get(file["verified_by"], "not verified (no published SHA-256 to compare with)")
        return f"{file['file']}: converted, {checked}"
    if file["downloaded"]:
        return f"{file['file']}: downloaded, not converted yet"
    return f"{file['file']}: not present"
