"""What every benchmark script records: the machine, the versions, and its own section of
``benchmarks/RESULTS.md``.

Each script owns one named section, delimited by ``<!-- BEGIN name -->`` and
``<!-- END name -->``; writing replaces that section only (or appends it), so several
scripts can share the file.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
_TITLE = (
    "# drift_jax benchmark results\n\n"
    "Written by the scripts in `benchmarks/`; each script owns one section.\n"
)
_PACKAGES = ("jax", "jaxlib", "numpy", "equinox", "dynamax")


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info(packages: tuple[str, ...] = _PACKAGES) -> dict[str, str]:
    """The machine, OS, Python, package versions and the date, as ``{label: value}``."""
    info = {
        "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "CPU": cpu_model(),
        "cores usable": str(usable_cores()),
        "OS": platform.platform(),
        "python": platform.python_version(),
    }
    for name in packages:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = "not installed"
    info["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") or "(unset)"
    return info


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    """A GitHub markdown table; cells are formatted with ``str``."""
    cells = [[str(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def machine_markdown(info: dict[str, str]) -> str:
    """The machine description as a one-line-per-item markdown list."""
    return "\n".join(f"- {key}: `{value}`" for key, value in info.items())


def write_section(name: str, body: str, path: Path = RESULTS) -> Path:
    """Write ``body`` as section ``name`` of ``path``, replacing that section if present."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else _TITLE
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
    return path
