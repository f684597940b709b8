"""What the benchmark scripts (bench_precisions.sh, bench_scale.sh) say about the machine and
the build in their tables' headers. Imported by their reporting code, run from the repository
root."""
import os
import subprocess


def machine(binary):
    """'<CPU model> (<n> CPUs; our kernels: <the kernels line of `binary --version`>)'."""
    cpu = "unknown CPU"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    # The kernels our binary runs here (AVX-512, VNNI, BF16, AMX tiles ...).
    try:
        kernels = next((l.split(":", 1)[1].strip() for l in subprocess.run(
            [binary, "--version"], capture_output=True, text=True).stdout.splitlines()
            if l.startswith("kernels:")), "?")
    except OSError:
        kernels = "?"
    return f"{cpu} ({os.cpu_count()} CPUs; our kernels: {kernels})"


def commit():
    """The short hash of HEAD, or '?'."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        out = ""
    return out or "?"
