"""The model bundle (DESIGN.md §6): a folder or prefix with ``manifest.json`` written last.

Files are staged in a local temporary folder and uploaded only on commit; the old manifest is removed before the
upload and the new one, with a SHA-256 of every file, is written after it. So a crash leaves either the previous
bundle untouched or no manifest at all, and a bundle without a manifest (or with a file whose checksum differs)
is refused. Only safetensors and JSON are read: nothing is unpickled.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np

from reasonrec import storage

MANIFEST = "manifest.json"
RANKING_TASKS = ("sequential", "direct")  # what a tool answers when the manifest does not say (older bundles)


class BundleError(RuntimeError):
    pass


class Bundle:
    """Read side: verified access to a committed bundle."""

    def __init__(self, uri: str):
        self.uri = uri
        manifest_uri = storage.join(uri, MANIFEST)
        if not storage.exists(manifest_uri):
            raise BundleError(f"{uri}: no {MANIFEST}: not a committed bundle (run `reasonrec train-tools`)")
        self.manifest = storage.read_json(manifest_uri)

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def tool_names(self) -> list[str]:
        return sorted(self.manifest.get("tools", {}))

    def tools_for(self, task: str) -> list[str]:
        """The tools that answer ``task``: ranking tools for sequential and direct, CTR tools for ctr (a bundle
        written before tools recorded their tasks holds ranking tools only)."""
        tools = self.manifest.get("tools", {})
        return sorted(name for name, info in tools.items() if task in info.get("tasks", RANKING_TASKS))

    def read(self, rel: str) -> bytes:
        expected = self.manifest["files"].get(rel)
        if expected is None:
            raise BundleError(f"{self.uri}: {rel} is not listed in the manifest")
        data = storage.read_bytes(storage.join(self.uri, rel))
        if storage.sha256(data) != expected:
            raise BundleError(f"{self.uri}: {rel} does not match its manifest checksum (tampered or truncated)")
        return data

    def item_ids(self) -> np.ndarray:
        return np.array(json.loads(self.read("vocab/items.json")), dtype=object)

    def materialise(self, prefix: str, folder: str | Path) -> Path:
        """Copy the files under ``prefix`` into a local folder, each verified against its checksum."""
        rels = [r for r in self.manifest["files"] if r.startswith(prefix)]
        if not rels:
            raise BundleError(f"{self.uri}: nothing under {prefix} (for vlm/: run `reasonrec finetune-vlm`)")
        for rel in rels:
            target = Path(folder) / rel[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read(rel))
        return Path(folder)

    def vlm_folder(self, folder: str | Path) -> Path:
        """The fine-tuned VLM as a local Hugging Face folder (transformers and vLLM load from a path)."""
        return self.materialise("vlm/", folder)

    def tool_was_refit(self, name: str) -> bool:
        return bool(json.loads(self.read(f"tools/{name}/config.json"))["config"].get("refit"))

    def has_holdout(self, name: str) -> bool:
        return f"tools/{name}/holdout/model.safetensors" in self.manifest["files"]

    def load_tool(self, name: str, holdout: bool = False):
        """The deployed tool; ``holdout``: its weights from before the refit on train + validation, when it was
        refit (a tool that was not refit never saw the validation items, so it is its own holdout)."""
        from reasonrec.tools.base import Tool  # torch: only where a tool is loaded

        if name not in self.manifest.get("tools", {}):
            raise BundleError(f"{self.uri}: no tool {name!r}; the bundle has {self.tool_names}")
        prefix = f"tools/{name}/holdout/" if holdout and self.has_holdout(name) else f"tools/{name}/"
        with tempfile.TemporaryDirectory() as tmp:
            return Tool.load(self.materialise(prefix, tmp))


class BundleWriter:
    """Stage files locally, then ``commit`` them with a new manifest. Use as a context manager."""

    def __init__(self, uri: str):
        self.uri = uri
        self._stage = Path(tempfile.mkdtemp(prefix="reasonrec-bundle-"))
        self._tools: dict[str, dict] = {}
        self._vlm: dict | None = None
        self._extra: dict = {}

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self._stage, ignore_errors=True)

    def add_file(self, rel: str, data: bytes) -> None:
        target = self._stage / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def add_tool(self, name: str, folder: str | Path, metrics: dict, tasks: tuple[str, ...] = RANKING_TASKS) -> None:
        shutil.copytree(folder, self._stage / "tools" / name, dirs_exist_ok=True)
        self._tools[name] = {"metrics": metrics, "tasks": list(tasks)}

    def staged_tools(self) -> list[str]:
        return sorted(self._tools)

    def staged_tool(self, name: str, holdout: bool = False) -> Path:
        """The folder of a tool added to this writer (its holdout copy when asked and it has one)."""
        folder = self._stage / "tools" / name
        return folder / "holdout" if holdout and (folder / "holdout" / "model.safetensors").exists() else folder

    def add_vlm(self, folder: str | Path, info: dict) -> None:
        """The fine-tuned VLM's HF folder under ``vlm/``; replaces the previous one as a whole."""
        shutil.copytree(folder, self._stage / "vlm", dirs_exist_ok=True)
        self._vlm = info

    def update(self, **fields) -> None:
        self._extra.update(fields)

    def commit(self) -> dict:
        """Merge with the previous manifest (tools not retrained are kept), upload, write the manifest last."""
        previous = Bundle(self.uri).manifest if storage.exists(storage.join(self.uri, MANIFEST)) else {}
        replaced = [f"tools/{n}/" for n in self._tools] + (["vlm/"] if self._vlm is not None else [])
        files = {rel: sha for rel, sha in previous.get("files", {}).items()
                 if not any(rel.startswith(prefix) for prefix in replaced)}
        staged = sorted(p for p in self._stage.rglob("*") if p.is_file())
        for path in staged:
            files[path.relative_to(self._stage).as_posix()] = storage.sha256_file(path)
        manifest = {
            **previous, **self._extra,
            "version": dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8],
            "created": dt.datetime.now(dt.timezone.utc).isoformat(),
            "tools": {**previous.get("tools", {}), **self._tools},
            **({"vlm": self._vlm} if self._vlm is not None else {}),
            "files": files,
        }
        storage.delete(storage.join(self.uri, MANIFEST))
        storage.upload_dir(self._stage, self.uri)
        storage.write_json(storage.join(self.uri, MANIFEST), manifest)
        return manifest
