"""The one plug-in table (aimaster.plugins): kinds imported lazily, one-line errors for unknown kinds
and for missing optional dependencies."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aimaster import plugins
from aimaster.data.outputs import OutputSink, register_sink, sink_from_description
from aimaster.errors import ConfigError, EtcdDataError, UrlError
from aimaster.io.tables.urls import backend_module


def test_every_registered_kind_loads():
    from aimaster.io.files import FileSink
    from aimaster.io.tables.parquet import ParquetSink

    assert plugins.load("output_sink", "files") is FileSink
    assert plugins.load("output_sink", "parquet") is ParquetSink
    for kind in plugins.known("output_sink"):
        assert issubclass(plugins.load("output_sink", kind), OutputSink)
        assert plugins.load("output_sink", kind).kind == kind
    for kind in plugins.known("table_backend"):
        module = plugins.load("table_backend", kind)
        assert callable(module.open_source) and callable(module.open_sink)


def test_nothing_is_imported_before_first_use():
    code = ("import sys; import aimaster.plugins, aimaster.data.outputs, aimaster.io.tables.urls; "
            "print(any(m in sys.modules for m in ('aimaster.io.tables.odps', 'aimaster.io.tables.odps_sink', "
            "'aimaster.io.files')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_unknown_kind_lists_the_known_ones_in_one_line():
    with pytest.raises(plugins.UnknownPluginError) as e:
        plugins.load("output_sink", "ftp")
    message = str(e.value)
    assert "\n" not in message and "'ftp'" in message
    assert "files, odps, parquet, warehouse" in message
    with pytest.raises(plugins.UnknownPluginError, match="groups: output_sink, table_backend"):
        plugins.load("launcher", "local")


def test_an_unknown_sink_kind_from_etcd_is_an_etcd_data_error():
    with pytest.raises(EtcdDataError, match=r"unknown output sink kind 'ftp'.*known: files"):
        sink_from_description({"kind": "ftp", "dir": "/x"})
    with pytest.raises(EtcdDataError, match="kind None"):
        sink_from_description({"dir": "/x"})


def test_an_unknown_table_backend_is_a_url_error():
    with pytest.raises(UrlError, match="unknown table backend kind 'nosql'"):
        backend_module("nosql")


def test_a_missing_optional_dependency_names_the_extra(monkeypatch, tmp_path):
    module = tmp_path / "needs_missing_dep.py"
    module.write_text("import surely_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.register("output_sink", "fancy", "needs_missing_dep:FancySink", extra="fancy")
    try:
        with pytest.raises(ConfigError) as e:
            plugins.load("output_sink", "fancy")
        assert "pip install 'aimaster[fancy]'" in str(e.value)
        assert "surely_missing_dependency_xyz" in str(e.value)
        assert "\n" not in str(e.value)
    finally:
        del plugins._TABLE["output_sink"]["fancy"]


def test_register_sink_adds_a_class_of_elsewhere():
    @register_sink
    class MemorySink(OutputSink):
        kind = "test-memory"

        def describe(self):
            return {"kind": self.kind}

        @classmethod
        def from_description(cls, description):
            return cls()

        def publish(self, slice_id, staged):
            pass

        def discard(self, staged):
            pass

    try:
        assert isinstance(sink_from_description({"kind": "test-memory"}), MemorySink)
        assert "test-memory" in plugins.known("output_sink")
    finally:
        del plugins._TABLE["output_sink"]["test-memory"]
        plugins._LOADED.pop(("output_sink", "test-memory"), None)


def test_register_validates_its_arguments():
    with pytest.raises(ValueError):
        plugins.register("output_sink", "", "x:Y")
    with pytest.raises(ValueError):
        plugins.register("output_sink", "x", ":Y")
