"""Each data type: what it accepts, what it refuses, and what the model receives."""

import base64
import io
import math
from pathlib import Path

import pytest
from PIL import Image

from modelcloud._files import FilePolicy
from modelcloud.data_types import (
    DecodeContext,
    InvalidValue,
    array,
    boolean,
    category,
    file,
    image,
    number,
    text,
    vector,
)
from modelcloud.data_types import any as any_type


@pytest.fixture
def ctx(tmp_path: Path) -> DecodeContext:
    return DecodeContext(FilePolicy(roots=(tmp_path,)), tmp_path / "scratch")


@pytest.fixture
def form(ctx: DecodeContext) -> DecodeContext:
    return DecodeContext(ctx.files, ctx.workdir, from_form=True)


def encoded(img: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def test_number_whole_steps_give_ints_and_floats_stay_floats(ctx):
    assert number(min=0, max=10, step=1).deserialize(3.0, ctx) == 3
    assert isinstance(number(min=0, max=10, step=1).deserialize(3.0, ctx), int)
    assert number(min=0, max=1, step=0.1).deserialize(0.3, ctx) == pytest.approx(0.3)
    assert number().deserialize(-2.5, ctx) == -2.5


@pytest.mark.parametrize("bad", [math.nan, math.inf, "3", None, [1], True])
def test_number_refuses_non_finite_and_non_numbers(ctx, bad):
    with pytest.raises(InvalidValue):
        number().deserialize(bad, ctx)


def test_number_from_a_form_field_is_parsed(form):
    assert number(step=1).deserialize("42", form) == 42
    assert number().deserialize("1e-3", form) == pytest.approx(0.001)
    with pytest.raises(InvalidValue, match="must be a number, not 'forty'"):
        number().deserialize("forty", form)
    with pytest.raises(InvalidValue, match="finite"):
        number().deserialize("nan", form)


def test_number_declaration_errors_are_caught_at_import_time():
    with pytest.raises(ValueError, match="greater than max"):
        number(min=5, max=1)
    with pytest.raises(ValueError, match="step must be positive"):
        number(step=0)
    with pytest.raises(InvalidValue, match="at most 1"):
        number(min=0, max=1, default=3)


def test_text_lengths(ctx):
    t = text(min_length=2, max_length=4)
    assert t.deserialize("abc", ctx) == "abc"
    for bad in ("a", "abcde"):
        with pytest.raises(InvalidValue):
            t.deserialize(bad, ctx)
    with pytest.raises(InvalidValue, match="not a number"):
        t.deserialize(1, ctx)


def test_boolean_is_strict_in_json_and_lenient_in_forms(ctx, form):
    assert boolean().deserialize(False, ctx) is False
    with pytest.raises(InvalidValue):
        boolean().deserialize("true", ctx)
    with pytest.raises(InvalidValue):
        boolean().deserialize(1, ctx)
    assert boolean().deserialize("TRUE", form) is True
    assert boolean().deserialize("0", form) is False


def test_category_choices(ctx):
    c = category(choices=["cat", "dog"], default="cat")
    assert c.deserialize("dog", ctx) == "dog"
    with pytest.raises(InvalidValue, match="must be one of"):
        c.deserialize("cow", ctx)
    with pytest.raises(ValueError, match="not one of the choices"):
        category(choices=["a"], default="b")


def test_vector_has_its_length_and_numbers(ctx, form):
    v = vector(length=3)
    assert v.deserialize([1, 2, 3.5], ctx) == [1.0, 2.0, 3.5]
    assert v.deserialize("[0, 0, 1]", form) == [0.0, 0.0, 1.0]
    with pytest.raises(InvalidValue, match="exactly 3"):
        v.deserialize([1, 2], ctx)
    with pytest.raises(InvalidValue) as excinfo:
        v.deserialize([1, "x", 3], ctx)
    assert excinfo.value.path == (1,)


def test_array_decodes_each_item_and_serializes_numpy_like_values(ctx):
    a = array(number(min=0), max_length=3)
    assert a.deserialize([1, 2], ctx) == [1, 2]
    with pytest.raises(InvalidValue, match="at most 3 items"):
        a.deserialize([1, 2, 3, 4], ctx)
    with pytest.raises(InvalidValue) as excinfo:
        array(array(number(min=0))).deserialize([[1], [2, -1]], ctx)
    assert excinfo.value.path == (1, 1)

    class FakeArray:
        def tolist(self):
            return [0.25, 0.5]

    assert array(number()).serialize(FakeArray()) == [0.25, 0.5]
    with pytest.raises(TypeError, match="item_type must be a data type"):
        array(str)  # type: ignore[arg-type]


def test_any_passes_json_through(ctx):
    assert any_type().deserialize({"a": [1, None]}, ctx) == {"a": [1, None]}


def test_image_decodes_base64_with_and_without_data_url_and_converts_mode(ctx):
    rgba = Image.new("RGBA", (4, 3), (255, 0, 0, 128))
    plain = image().deserialize(encoded(rgba), ctx)
    assert (plain.mode, plain.size) == ("RGB", (4, 3))
    prefixed = image(channels=4).deserialize("data:image/png;base64," + encoded(rgba), ctx)
    assert prefixed.mode == "RGBA"
    gray = image(channels=1).deserialize(encoded(Image.new("RGB", (2, 2)), "JPEG"), ctx)
    assert gray.mode == "L"


def test_image_tolerates_whitespace_and_missing_padding_but_not_garbage(ctx):
    data = encoded(Image.new("RGB", (3, 3)))
    wrapped = "\n".join(data[i : i + 10] for i in range(0, len(data), 10)).rstrip("=")
    assert image().deserialize(wrapped, ctx).size == (3, 3)
    with pytest.raises(InvalidValue, match="not valid base64"):
        image().deserialize("abc$%^", ctx)
    truncated = data[: len(data) // 2]
    with pytest.raises(InvalidValue, match="image"):
        image().deserialize(truncated, ctx)


def test_image_output_keeps_transparency_as_png():
    rgba = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert image().serialize(rgba).startswith("data:image/png;base64,")
    assert (
        image(default_output_format="PNG")
        .serialize(Image.new("RGB", (2, 2)))
        .startswith("data:image/png;base64,")
    )
    with pytest.raises(InvalidValue, match="must be a PIL image"):
        image().serialize("not an image")


def test_file_accepts_paths_inside_the_roots_only(ctx, tmp_path):
    (tmp_path / "model.pkl").write_bytes(b"x")
    assert file(extension=".pkl").deserialize(str(tmp_path / "model.pkl"), ctx) == str(
        (tmp_path / "model.pkl").resolve()
    )
    escapes = [
        "/etc/passwd",
        str(tmp_path / ".." / ".." / "etc" / "passwd"),
        str(tmp_path / "model.pkl\x00.txt"),
    ]
    for bad in escapes:
        with pytest.raises(InvalidValue):
            file().deserialize(bad, ctx)
    with pytest.raises(InvalidValue, match="no such file"):
        file().deserialize(str(tmp_path / "missing.pkl"), ctx)
    (tmp_path / "model.txt").write_bytes(b"x")
    with pytest.raises(InvalidValue, match=r"must be a \.pkl file"):
        file(extension="pkl").deserialize(str(tmp_path / "model.txt"), ctx)


def test_file_directory_and_symlink_escape(ctx, tmp_path):
    (tmp_path / "weights").mkdir()
    assert file(is_directory=True).deserialize(str(tmp_path / "weights"), ctx).endswith("weights")
    (tmp_path / "f.bin").write_bytes(b"1")
    with pytest.raises(InvalidValue, match="must be a folder"):
        file(is_directory=True).deserialize(str(tmp_path / "f.bin"), ctx)
    (tmp_path / "link").symlink_to("/etc/hostname")
    with pytest.raises(InvalidValue, match="inside the model's folder"):
        file().deserialize(str(tmp_path / "link"), ctx)


def test_file_output_is_a_data_url(tmp_path):
    (tmp_path / "out.txt").write_text("hi")
    assert file().serialize(str(tmp_path / "out.txt")) == "data:text/plain;base64,aGk="
