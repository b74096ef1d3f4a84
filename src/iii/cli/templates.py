"""What ``iii worker init`` writes, per language (``{{worker_name}}`` is filled in)."""

from __future__ import annotations

import json
from typing import Any, Optional

__all__ = ["LANGUAGES", "ALIASES", "TEMPLATES", "ENTRY_POINTS", "render"]

#: Canonical language -> short name stored in ``.iii/worker.ini``.
LANGUAGES = {"typescript": "ts", "javascript": "js", "python": "py", "rust": "rust"}
ALIASES = {"typescript": "typescript", "ts": "typescript", "javascript": "javascript", "js": "javascript",
           "python": "python", "py": "python", "rust": "rust", "rs": "rust"}
ENTRY_POINTS = {"typescript": "src/index.ts", "javascript": "src/index.js", "python": "src/main.py", "rust": "src/main.rs"}
NODE_SDK = "0.22.1"

_PYTHON_MAIN = '''"""{{worker_name}}: an iii worker."""

import os
import signal
import threading

from iii import InitOptions, register_worker

worker = register_worker(
    os.environ.get("III_URL", "ws://127.0.0.1:49134"),
    InitOptions(worker_name="{{worker_name}}"),
)


def hello(data):
    """Example function: {"name": "you"} -> {"greeting": "hello, you"}."""
    return {"greeting": f"hello, {(data or {}).get('name', 'world')}"}


worker.register_function(
    "{{worker_name}}::hello",
    hello,
    description="Greets {name}",
    request_format={"type": "object", "properties": {"name": {"type": "string"}}},
)
# Try it: `iii trigger {{worker_name}}::hello name=you` (and `iii trigger {{worker_name}}::hello --help`).
print("{{worker_name}} is ready", flush=True)

stopped = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopped.set())
signal.signal(signal.SIGINT, lambda *_: stopped.set())
stopped.wait()
worker.shutdown()
'''

_NODE_MAIN = '''import { registerWorker } from "iii-sdk";

const worker = registerWorker(process.env.III_URL ?? "ws://127.0.0.1:49134", {
  workerName: "{{worker_name}}",
});

// Example function: {"name": "you"} -> {"greeting": "hello, you"}
// Try it: `iii trigger {{worker_name}}::hello name=you`
worker.registerFunction("{{worker_name}}::hello", async (data{{ts_any}}) => ({
  greeting: `hello, ${data?.name ?? "world"}`,
}), { description: "Greets {name}" });
console.log("{{worker_name}} is ready");

const stop = async () => {
  await worker.shutdown();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
'''

def _node_manifest(language: str) -> str:
    return f"""name: {{{{worker_name}}}}
description: An iii worker written in {language}
scripts:
  install: npm install
  start: npm run start
"""


def _package_json(start: str, dev_dependencies: Optional[dict[str, str]] = None) -> str:
    package: dict[str, Any] = {
        "name": "{{worker_name}}",
        "version": "0.1.0",
        "private": True,
        "type": "module",
        "scripts": {"start": start},
        "dependencies": {"iii-sdk": NODE_SDK},
    }
    if dev_dependencies:
        package["devDependencies"] = dev_dependencies
    return json.dumps(package, indent=2) + "\n"


TEMPLATES: dict[str, dict[str, str]] = {
    "python": {
        "iii.worker.yaml": """name: {{worker_name}}
description: An iii worker written in Python
scripts:
  # The SDK is the `iii` package of the engine's own environment: nothing to download.
  install: python -c "import iii; print('iii SDK', iii.__version__)"
  # Restarts the worker whenever a file under src/ changes.
  start: watchfiles 'python src/main.py' src
""",
        "pyproject.toml": """[project]
name = "{{worker_name}}"
version = "0.1.0"
description = "An iii worker"
requires-python = ">=3.11"
# `iii` is provided by the iii-engine distribution (a drop-in for the official iii-sdk).
dependencies = ["iii-engine", "watchfiles"]
""",
        "src/main.py": _PYTHON_MAIN,
    },
    "typescript": {
        "iii.worker.yaml": _node_manifest("TypeScript"),
        "package.json": _package_json("tsx watch src/index.ts", {"tsx": "^4.19.0", "typescript": "^5.6.0", "@types/node": "^22.0.0"}),
        "tsconfig.json": """{
  "compilerOptions": {
    "target": "ES2022",
    "module": "NodeNext",
    "moduleResolution": "NodeNext",
    "strict": true,
    "skipLibCheck": true
  },
  "include": ["src"]
}
""",
        "src/index.ts": _NODE_MAIN.replace("{{ts_any}}", ": any"),
    },
    "javascript": {
        "iii.worker.yaml": _node_manifest("JavaScript"),
        "package.json": _package_json("node src/index.js"),
        "src/index.js": _NODE_MAIN.replace("{{ts_any}}", ""),
    },
    "rust": {
        "iii.worker.yaml": """name: {{worker_name}}
description: An iii worker written in Rust
scripts:
  install: cargo build --release
  start: cargo run --release
""",
        "Cargo.toml": """[package]
name = "{{worker_name}}"
version = "0.1.0"
edition = "2021"

[dependencies]
iii-sdk = "0.22"
serde_json = "1"
tokio = { version = "1", features = ["full"] }
""",
        "src/main.rs": """use serde_json::{json, Value};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("III_URL").unwrap_or_else(|_| "ws://127.0.0.1:49134".to_string());
    let worker = iii_sdk::register_worker(&url, iii_sdk::InitOptions {
        worker_name: Some("{{worker_name}}".into()),
        ..Default::default()
    })
    .await?;

    // Example function: {"name": "you"} -> {"greeting": "hello, you"}
    worker
        .register_function("{{worker_name}}::hello", |data: Value| async move {
            let name = data.get("name").and_then(Value::as_str).unwrap_or("world").to_string();
            Ok(json!({ "greeting": format!("hello, {name}") }))
        })
        .await?;

    println!("{{worker_name}} is ready");
    tokio::signal::ctrl_c().await?;
    worker.shutdown_async().await;
    Ok(())
}
""",
    },
}


def render(language: str, worker_name: str) -> dict[str, str]:
    """The files of ``language``'s template for ``worker_name``: relative path -> text."""
    return {path: text.replace("{{worker_name}}", worker_name) for path, text in TEMPLATES[language].items()}
