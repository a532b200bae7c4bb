"""Example task data (manifests, built .wasm modules, the C SDK header) shipped with wasmyard; no Python code lives here."""
