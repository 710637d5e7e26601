"""Declaring a model: the decorators' forms and the mistakes they catch early."""

import types

import pytest

import modelcloud
from modelcloud import Model
from modelcloud.data_types import file, image, number, text


def test_public_surface_is_complete():
    public = {
        name
        for name, value in vars(modelcloud).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    modules = {"data_types", "exceptions", "tracking"}
    assert set(modelcloud.__all__) - modules == public | {"__version__"}
    for name in modelcloud.data_types.__all__:
        assert hasattr(modelcloud.data_types, name)


def test_setup_bare_and_with_options():
    bare, with_options = Model(), Model()

    @bare.setup
    def setup_a():
        return 1

    @with_options.setup(options={"checkpoint": file(extension=".pkl")})
    def setup_b(opts):
        return opts

    assert bare.setup_fn is setup_a
    assert with_options.setup_options["checkpoint"].extension == ".pkl"
    assert with_options.manifest().setup_options[0].name == "checkpoint"


def test_several_commands_keep_their_order_and_docstrings():
    model = Model()

    @model.command("first", inputs={"photo": image()}, outputs={"label": text()})
    def first(model, inputs):
        """Say what is in the photo."""

    @model.command("second", inputs={}, outputs={}, description="explicit")
    def second(model, inputs):
        """ignored"""

    manifest = model.manifest()
    assert [c.name for c in manifest.commands] == ["first", "second"]
    assert [c.description for c in manifest.commands] == ["Say what is in the photo.", "explicit"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("has space", "must be 1-64 letters"),
        ("a/b", "must be 1-64 letters"),
        ("", "must be 1-64 letters"),
        ("meta", "reserved"),
        ("healthz", "reserved"),
    ],
)
def test_bad_command_names_fail_at_declaration(name, message):
    with pytest.raises(ValueError, match=message):
        Model().command(name, inputs={}, outputs={})


def test_inputs_must_be_data_types():
    with pytest.raises(TypeError, match="input 'photo' must be a data type"):
        Model().command("c", inputs={"photo": "image"}, outputs={})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="output 'n' must be a data type"):
        Model().command("c", inputs={}, outputs={"n": number})  # type: ignore[dict-item]


def test_a_name_declared_twice_is_an_error_but_a_reimport_is_not():
    model = Model()

    def make():
        @model.command("c", inputs={}, outputs={})
        def c(model, inputs):
            return {}

    make()
    make()  # the same function again, as when a script is imported twice
    with pytest.raises(ValueError, match="declared twice"):

        @model.command("c", inputs={}, outputs={})
        def other(model, inputs):
            return {}
