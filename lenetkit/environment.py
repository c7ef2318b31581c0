"""Where this installation keeps things, and what it can use: its folders, the shipped model,
the devices and the optional packages."""

import importlib
from pathlib import Path
from types import ModuleType

import torch

from lenetkit.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent
# A clone (or an editable install) keeps data/ and the model you train in its own folder; an
# installed copy keeps them in the folder it is run from.
PROJECT_DIR = (PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "pyproject.toml").is_file()
               else Path.cwd())
DEFAULT_DATA_DIR = PROJECT_DIR / "data"
DEFAULT_MODEL_PATH = PROJECT_DIR / "mnist_model.pth"  # what train.py writes; never committed
# The model shipped with the code: training never writes it, so a user's run can't change what
# a clone holds.
PRETRAINED_MODEL_PATH = PACKAGE_DIR / "pretrained" / "mnist_model.pth"

def default_model_path() -> Path:
    """The model a script uses when none is named: the one you trained, else the shipped one."""
    return DEFAULT_MODEL_PATH if DEFAULT_MODEL_PATH.is_file() else PRETRAINED_MODEL_PATH


def require(module: str, listed_in: str = "requirements-deploy.txt") -> ModuleType:
    """Imports a package that only some work needs (by default, of the optional deployment set),
    or says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"this needs the {module.split('.')[0]} package: "
                        f"pip install -r {listed_in}") from None


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """`auto` takes CUDA, then Apple's MPS, then the CPU; a named device (`cuda`, `cuda:1`, ...)
    must be available."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    choices = "use one of: auto, " + ", ".join(device for device, ok in available.items() if ok)
    if name == "auto":
        return torch.device(next(device for device, ok in available.items() if ok))
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"device {name!r} is not available here (no such device); "
                        f"{choices}") from None
    if not available.get(device.type, False):
        raise UserError(f"device {str(name)!r} is not available here; {choices}")
    return device


def has_native_bf16(device: torch.device) -> bool:
    """Whether `device` does bfloat16 arithmetic in hardware. A CPU without AVX512-BF16 or AMX, or
    a GPU older than Ampere, emulates it, and bf16 autocast there is slower than float32."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return True  # Apple's MPS
