"""Reading what a bundle declares without running it: the interface of cloud_model.py and
the build spec of modelcloud.yml."""

from pathlib import Path

import pytest

from modelcloud import data_types as sdk
from modelcloud_proto.manifest import CommandSpec, FieldSpec, FieldType, ModelManifest
from modelcloud_proto.specs import BuildSpec, Device
from services.registry.interfaces.build_file import (
    BuildFile,
    BuildFileRejected,
    parse_build_file,
)
from services.registry.interfaces.parser import InterfaceError, parse_interface

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "imagenet-classifier"

# Seed 001, Tutorial 1: the squeezenet example after its modification, without the diff's
# "+" markers (and with the function bodies indented by one level, as Python needs).
SEED_CLOUD_MODEL = """\
import json
from PIL import Image
from torchvision import models, transforms
from torch.autograd import Variable
import modelcloud
from modelcloud.data_types import image, text

labels = json.load(open('labels.json'))

normalize = transforms.Normalize(
   mean=[0.485, 0.456, 0.406],
   std=[0.229, 0.224, 0.225]
)

preprocess = transforms.Compose([
   transforms.Scale(256),
   transforms.CenterCrop(224),
   transforms.ToTensor(),
   normalize
])

@modelcloud.setup
def setup():
    return models.squeezenet1_1(pretrained=True)

@modelcloud.command('classify', inputs={ 'photo': image() }, outputs={ 'label': text() })
def classify(model, input):
    img = input['photo']
    img_tensor = preprocess(img)
    img_tensor.unsqueeze_(0)
    img_variable = Variable(img_tensor)
    fc_out = model(img_variable)
    label = labels[str(fc_out.data.numpy().argmax())]
    return { 'label': label }

if __name__ == '__main__':
    modelcloud.run()
"""


def image(name: str) -> FieldSpec:
    return FieldSpec(name=name, type=FieldType.IMAGE, channels=3)


def test_the_example_model() -> None:
    parsed = parse_interface((EXAMPLE / "cloud_model.py").read_text(encoding="utf-8"))

    assert parsed.warnings == []
    assert parsed.manifest == ModelManifest(
        sdk_version="unknown",
        setup_options=[],
        commands=[
            CommandSpec(
                name="classify",
                inputs=[image("photo")],
                outputs=[FieldSpec(name="label", type=FieldType.TEXT)],
            ),
            CommandSpec(
                name="classify_top",
                inputs=[
                    image("photo"),
                    FieldSpec(
                        name="k",
                        type=FieldType.NUMBER,
                        required=False,
                        default=5,
                        minimum=1,
                        maximum=20,
                        step=1,
                    ),
                ],
                outputs=[
                    FieldSpec(
                        name="labels",
                        type=FieldType.ARRAY,
                        item=FieldSpec(name="item", type=FieldType.TEXT),
                    ),
                    FieldSpec(
                        name="scores",
                        type=FieldType.ARRAY,
                        item=FieldSpec(name="item", type=FieldType.NUMBER),
                    ),
                ],
            ),
        ],
    )


def test_the_seed_tutorial_model() -> None:
    parsed = parse_interface(SEED_CLOUD_MODEL)

    assert parsed.warnings == []
    assert parsed.manifest.setup_options == []
    assert parsed.manifest.commands == [
        CommandSpec(
            name="classify",
            inputs=[image("photo")],
            outputs=[FieldSpec(name="label", type=FieldType.TEXT)],
        )
    ]


def test_setup_options_in_the_seed_spelling() -> None:
    source = """
@modelcloud.setup(options={'checkpoint': runway.file(extension='.pkl')})
def setup(opts):
   checkpoint_path = opts['checkpoint']
   model = load_model_from_checkpoint(checkpoint_path)
"""
    parsed = parse_interface(source)

    assert parsed.warnings == []
    assert parsed.manifest.setup_options == [
        FieldSpec(name="checkpoint", type=FieldType.FILE, extension=".pkl", is_directory=False)
    ]
    assert parsed.manifest.commands == []


# The parser must describe each field exactly as the SDK will at GET /meta.
@pytest.mark.parametrize(
    ("source", "declared"),
    [
        ("image()", sdk.image()),
        ("image('a photo', 4)", sdk.image("a photo", 4)),
        ("data_types.image(channels=1, max_pixels=10)", sdk.image(channels=1, max_pixels=10)),
        ("text()", sdk.text()),
        ("text('caption', 'hi', 1, 80)", sdk.text("caption", "hi", 1, 80)),
        ("text(default=None)", sdk.text(default=None)),  # type: ignore[arg-type]
        ("number(min=1, max=20, step=1, default=5)", sdk.number(min=1, max=20, step=1, default=5)),
        ("number('k', 0.5, -1, 1.5)", sdk.number("k", 0.5, -1, 1.5)),
        ("boolean(default=True)", sdk.boolean(default=True)),
        ("category(['cat', 'dog'], default='cat')", sdk.category(["cat", "dog"], default="cat")),
        ("category(choices=(1, 2))", sdk.category(choices=(1, 2))),  # type: ignore[arg-type]
        ("vector(512)", sdk.vector(512)),
        ("vector(length=3, default=[0, 0, 1])", sdk.vector(length=3, default=[0, 0, 1])),
        ("array(text())", sdk.array(sdk.text())),
        (
            "array(item_type=number(min=0), min_length=1, max_length=9, default=[1])",
            sdk.array(item_type=sdk.number(min=0), min_length=1, max_length=9, default=[1]),
        ),
        ("array(array(boolean()))", sdk.array(sdk.array(sdk.boolean()))),
        ("file(extension='pkl')", sdk.file(extension="pkl")),
        ("file('weights', is_directory=True, default=None)", sdk.file("weights", None, True, None)),
        ("any(default={'a': [1, 2]})", sdk.any(default={"a": [1, 2]})),
    ],
)
def test_fields_match_what_the_sdk_declares(source: str, declared: sdk.DataType) -> None:
    parsed = parse_interface(
        f"@modelcloud.command('c', inputs={{'x': {source}}})\ndef c(m, i): ..."
    )

    assert parsed.warnings == []
    assert parsed.manifest.commands[0].inputs == [declared.spec("x")]


def test_description_from_the_decorator_or_the_docstring() -> None:
    source = '''
import modelcloud as mc

@mc.command('first', description='Says hello.')
def first(model, inputs):
    """Not this one."""

@mc.command('second')
async def second(model, inputs):
    """Says goodbye.

    In two paragraphs.
    """

class Server:
    @command('third', {'q': text()}, {'a': text()})
    def third(self, model, inputs): ...
'''
    commands = parse_interface(source).manifest.commands

    assert [(c.name, c.description) for c in commands] == [
        ("first", "Says hello."),
        ("second", "Says goodbye.\n\nIn two paragraphs."),
        ("third", None),
    ]
    assert [f.name for f in commands[2].inputs + commands[2].outputs] == ["q", "a"]


def test_dynamic_inputs_are_left_out_with_a_warning() -> None:
    source = """import modelcloud
INPUTS = {name: modelcloud.data_types.text() for name in ('a', 'b')}

@modelcloud.command('echo', inputs=INPUTS, outputs={'out': text()})
def echo(model, inputs):
    return {'out': inputs['a']}
"""
    parsed = parse_interface(source)

    assert parsed.warnings == [
        "line 4: the inputs of command 'echo' are not a literal {'name': type(), ...} dict; "
        "left out"
    ]
    assert parsed.manifest.commands == [
        CommandSpec(name="echo", outputs=[FieldSpec(name="out", type=FieldType.TEXT)])
    ]


def test_unreadable_pieces_are_skipped_one_by_one() -> None:
    source = """
LIMIT = 10
@modelcloud.command(NAME, inputs={'x': text()})
def skipped(model, inputs): ...

@modelcloud.command('kept', inputs=dict(
    k=number(min=0, max=LIMIT),
    mystery=my_type(),
    spread=text(*args),
    photo=image(default='x.jpg'),
    ok=boolean(default=False),
))
def kept(model, inputs): ...
"""
    parsed = parse_interface(source)

    assert parsed.manifest.commands == [
        CommandSpec(
            name="kept",
            inputs=[
                FieldSpec(name="k", type=FieldType.NUMBER, minimum=0),
                FieldSpec(name="ok", type=FieldType.BOOLEAN, required=False, default=False),
            ],
        )
    ]
    assert parsed.warnings == [
        "line 3: the command name is not a literal string; the command is skipped",
        "line 7: the inputs of command 'kept': 'k': max= is not a literal value; left out",
        "line 8: the inputs of command 'kept': 'mystery': my_type() is not a known data type "
        "such as image() or text(); skipped",
        "line 9: the inputs of command 'kept': 'spread': text() has *args or **kwargs, "
        "which cannot be read; skipped",
        "line 10: the inputs of command 'kept': 'photo': image() has an unexpected argument "
        "default=; skipped",
    ]


def test_a_second_setup_or_a_repeated_command_is_reported() -> None:
    source = """
@modelcloud.setup(options={'size': number(default=1)})
def setup(opts): ...

@modelcloud.setup
def setup_again(): ...

@modelcloud.command('c')
def c(m, i): ...

@modelcloud.command('c', outputs={'x': text()})
def c_again(m, i): ...
"""
    parsed = parse_interface(source)

    assert [o.name for o in parsed.manifest.setup_options] == ["size"]
    assert parsed.manifest.commands == [CommandSpec(name="c")]
    assert parsed.warnings == [
        "line 5: setup is declared again (first at line 2)",
        "line 11: command 'c' is declared again; the first one is kept",
    ]


@pytest.mark.parametrize(
    ("source", "line"),
    [
        ("import modelcloud\n\n@modelcloud.command('x'\ndef x(m, i): ...\n", 3),
        ("def f():\n    return 1\n  x = 2\n", 3),
    ],
)
def test_syntax_errors_name_the_line(source: str, line: int) -> None:
    with pytest.raises(InterfaceError) as caught:
        parse_interface(source)

    assert caught.value.line == line
    assert str(caught.value).startswith(f"line {line}: ")


def test_nul_bytes_are_an_interface_error() -> None:
    with pytest.raises(InterfaceError):
        parse_interface("x = 1\x00\n")


# ----------------------------------------------------------------------------- modelcloud.yml


@pytest.mark.parametrize("has_requirements", [True, False])
def test_without_a_build_file(has_requirements: bool) -> None:
    expected = ["pip install -r requirements.txt"] if has_requirements else []

    assert parse_build_file(None, has_requirements=has_requirements) == BuildFile(
        build_spec=BuildSpec(entrypoint="python cloud_model.py", build_steps=expected),
        service=None,
    )
    # A file that says nothing about build_steps gets the same default.
    built = parse_build_file("cuda: '12.4'\n", has_requirements=has_requirements)
    assert built.build_spec.build_steps == expected
    assert built.build_spec.cuda == "12.4"


def test_the_example_build_file() -> None:
    text = (EXAMPLE / "modelcloud.yml").read_text(encoding="utf-8")

    built = parse_build_file(text, has_requirements=True)

    assert built.build_spec == BuildSpec(
        python="3.11",
        cuda=None,
        entrypoint="python cloud_model.py",
        concurrency=4,
        build_steps=["pip install -r requirements.txt"],
    )
    assert built.service is not None
    assert built.service.name == "imagenet-classifier"
    assert built.service.license == "Apache-2.0"
    assert built.service.performance is not None
    assert built.service.performance.device is Device.ANY
    assert built.service.performance.memory == "512Mi"
    assert built.service.links is not None
    assert str(built.service.links.paper) == "https://arxiv.org/abs/1905.11946"


def test_the_seed_build_file_is_read_as_written() -> None:
    seed = "python: 3.6\ncuda: 9.2\nentrypoint: python cloud_model.py\nbuild_steps:\n"
    seed += "  - pip install -r requirements.txt\n"

    spec = parse_build_file(seed, has_requirements=True).build_spec

    assert (spec.python, spec.cuda) == ("3.6", "9.2")
    assert spec.build_steps == ["pip install -r requirements.txt"]


@pytest.mark.parametrize(
    ("text", "errors"),
    [
        (
            "python: 3.10\n",
            [("modelcloud.yml.python", "write the version as a quoted string, e.g. '3.10'")],
        ),
        ("pyhton: '3.11'\n", [("modelcloud.yml.pyhton", "is not a known key")]),
        (
            "service:\n  thumbnail: x\n",
            [("modelcloud.yml.service.thumbnail", "is not a known key")],
        ),
        (
            'build_steps:\n  - pip install torch\n  - "pip install x\\nrm -rf /"\n',
            [
                (
                    "modelcloud.yml.build_steps.1",
                    "each build step is one non-empty line of at most 2000 chars",
                )
            ],
        ),
        ("if_gpu: [3]\n", [("modelcloud.yml.if_gpu.0", "Input should be a valid string")]),
        (
            "concurrency: 0\n",
            [("modelcloud.yml.concurrency", "Input should be greater than or equal to 1")],
        ),
        ("- a list\n", [("modelcloud.yml", "must be a mapping of keys to values")]),
        (
            "a: &x [1]\nb: *x\n",
            [("modelcloud.yml", "line 2: YAML aliases (*name) are not allowed")],
        ),
    ],
)
def test_bad_build_files_name_the_field(text: str, errors: list[tuple[str, str]]) -> None:
    with pytest.raises(BuildFileRejected) as caught:
        parse_build_file(text, has_requirements=False)

    assert caught.value.errors == errors


def test_invalid_yaml_is_rejected_with_its_line() -> None:
    with pytest.raises(BuildFileRejected) as caught:
        parse_build_file("python: '3.11'\nbuild_steps: [a, b\n", has_requirements=False)

    ((path, message),) = caught.value.errors
    assert path == "modelcloud.yml"
    assert message.startswith("is not valid YAML: ")
    assert "(line 3)" in message
