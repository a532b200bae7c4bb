"""wasmyard: a coordinator for edge hubs (tasks in WebAssembly, events, shadows)."""
from .config import HubConfig, HubSettings, load_config
from .coordinator import Coordinator
from .errors import WasmyardError
from .manifest import Manifest, parse_manifest

__all__ = ["Coordinator", "HubConfig", "HubSettings", "Manifest", "WasmyardError", "load_config", "parse_manifest"]
__version__ = "0.1.0"
