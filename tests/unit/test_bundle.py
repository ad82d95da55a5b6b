import pytest

from reasonrec import storage
from reasonrec.bundle import Bundle, BundleError, BundleWriter
from reasonrec.tools import make_config, tool_class


def tiny_tool(tmp_path, name="pop"):
    tool = tool_class(name)(make_config(name), 5)
    folder = tmp_path / f"{name}-src"
    tool.save(folder)
    return folder


def test_commit_then_load_and_verify(tmp_path):
    uri = str(tmp_path / "bundle")
    with BundleWriter(uri) as w:
        w.add_tool("pop", tiny_tool(tmp_path), {"epoch": 0})
        w.add_file("vocab/items.json", b'["a","b","c","d","e"]')
        manifest = w.commit()
    bundle = Bundle(uri)
    assert bundle.version == manifest["version"] and bundle.tool_names == ["pop"]
    assert list(bundle.item_ids()) == ["a", "b", "c", "d", "e"]
    assert bundle.load_tool("pop").n_items == 5
    assert set(manifest["files"]) == set(storage.list_files(uri)) - {"manifest.json"}


def test_tampered_or_truncated_file_is_refused(tmp_path):
    uri = str(tmp_path / "bundle")
    with BundleWriter(uri) as w:
        w.add_tool("pop", tiny_tool(tmp_path), {})
        w.commit()
    weights = tmp_path / "bundle" / "tools" / "pop" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-3])
    with pytest.raises(BundleError, match="does not match its manifest checksum"):
        Bundle(uri).load_tool("pop")


def test_failed_write_leaves_previous_bundle_and_missing_manifest_is_refused(tmp_path):
    uri = str(tmp_path / "bundle")
    with BundleWriter(uri) as w:
        w.add_tool("pop", tiny_tool(tmp_path), {})
        first = w.commit()
    with pytest.raises(RuntimeError, match="boom"):
        with BundleWriter(uri) as w:
            w.add_tool("pop", tiny_tool(tmp_path), {})
            raise RuntimeError("boom")  # e.g. training crashed before commit
    assert Bundle(uri).version == first["version"]
    storage.delete(storage.join(uri, "manifest.json"))  # a crash between the delete and the final write
    with pytest.raises(BundleError, match="not a committed bundle"):
        Bundle(uri)


def test_commit_keeps_tools_that_were_not_retrained(tmp_path):
    uri = str(tmp_path / "bundle")
    with BundleWriter(uri) as w:
        w.add_tool("pop", tiny_tool(tmp_path), {})
        w.commit()
    with BundleWriter(uri) as w:
        w.add_tool("bprmf", tiny_tool(tmp_path, "bprmf"), {})
        w.commit()
    assert Bundle(uri).tool_names == ["bprmf", "pop"]
