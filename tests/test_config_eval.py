"""
The published configs' ``!!python/object/apply:eval`` tags: evaluated without running code, so
published-style YAML trees load through train_net.py and demo/demo.py with no flag, while hostile
expressions and other python tags are refused with the file and line.
"""

import re
import shutil
from pathlib import Path

import pytest

import maskformer  # noqa: F401  (registers components and datasets)
from maskformer.engine.config_expression import (
    MAX_ITEMS,
    UnsafeExpressionError,
    evaluate_expression,
)
from maskformer.engine.config_loading import ConfigError, load_config
from maskformer.tools import demo, train_net
from tests.utils.repo import REPO_ROOT

RELEASE_EXPRESSION = "[int(x * 0.1 * {size}) for x in range(5, 21)]"
# the base size of each published multi-scale MIN_SIZE_TRAIN list
RELEASE_SIZES = (512, 640, 1024, 2048)


def release_tag(size: int) -> str:
    """The tag exactly as the published release writes it."""
    return f'!!python/object/apply:eval ["{RELEASE_EXPRESSION.format(size=size)}"]'


@pytest.mark.parametrize("size", RELEASE_SIZES)
def test_release_expressions(size):
    expected = [int(x * 0.1 * size) for x in range(5, 21)]
    assert evaluate_expression(RELEASE_EXPRESSION.format(size=size)) == expected
    assert expected[0] == size // 2 and expected[-1] == 2 * size


def test_admitted_subset():
    assert evaluate_expression("[round(x / 3, 2) for x in (1, 2)]") == [0.33, 0.67]
    assert evaluate_expression("(2 ** 10, -7 // 2, 7 % 3, float('1.5'), int('4'))") == (
        1024,
        -4,
        1,
        1.5,
        4,
    )
    assert evaluate_expression("[x * y for x in range(3) for y in [1, 10]]") == [
        0,
        0,
        1,
        10,
        2,
        20,
    ]
    assert evaluate_expression("[[y for y in range(x)] for x in range(3)]") == [[], [0], [0, 1]]
    assert evaluate_expression("range(2, 8, 3)") == [2, 5]


@pytest.mark.parametrize(
    "expression, reason",
    [
        ("__import__('os').system('true')", r"Call .*__import__.* is not allowed"),
        ("().__class__.__bases__", r"Attribute .* is not allowed"),
        ("(lambda: 1)()", r"Call .*lambda.* is not allowed"),
        ("lambda: 1", r"Lambda .* is not allowed"),
        ("os", r"the name 'os' is not allowed"),
        ("[x for x in range(3)] + [y]", r"the name 'y' is not allowed"),
        ("open('/etc/passwd')", r"Call .*open.* is not allowed"),
        ("int(x=1)", r"positional arguments"),
        ("range(10**12)", rf"range\(\) of 1000000000000 items \(at most {MAX_ITEMS}\)"),
        ("9**9**9", r"the power 9 \*\* 387420489 is too large"),
        ("2 ** 100000", r"is too large"),
        ("[[x for x in range(10000)] for y in range(10000)]", r"more than 100000 evaluation steps"),
        ("[0 for x in range(10000) for y in range(10000)]", r"a list of more than 10000 items"),
        ("[0] * 10**9", r"arithmetic on numbers only"),
        ("'a' * 10**9", r"arithmetic on numbers only"),
        ("[x for x in range(5) if x]", r"without conditions"),
        ("{'a': 1}", r"Dict .* is not allowed"),
        ("1 / 0", r"division by zero"),
        ("(-8) ** 0.5", r"not a real number"),
        ("2.0 ** 1e6", r"fails: .*Numerical result out of range"),
        ("[*range(3)]", r"unpacking"),
        ("1; import os", r"not a Python expression"),
    ],
)
def test_hostile_expressions_are_refused(expression, reason):
    with pytest.raises(UnsafeExpressionError, match=reason):
        evaluate_expression(expression)


def publish_style_tree(destination: Path) -> dict:
    """
    Copy configs/ to ``destination`` with each multi-scale INPUT.MIN_SIZE_TRAIN list written as the
    release writes it (the eval tag). Returns {relative path: base size} of the rewritten files.
    """
    shutil.copytree(REPO_ROOT / "configs", destination)
    rewritten = {}
    for path in sorted(destination.rglob("*.yaml")):
        text = path.read_text()
        for size in RELEASE_SIZES:
            listed = str(evaluate_expression(RELEASE_EXPRESSION.format(size=size)))
            line = f"MIN_SIZE_TRAIN: {listed}\n"
            if line in text:
                path.write_text(text.replace(line, f"MIN_SIZE_TRAIN: {release_tag(size)}\n"))
                rewritten[str(path.relative_to(destination))] = size
    return rewritten


@pytest.fixture(scope="module")
def published_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("published") / "configs"
    return root, publish_style_tree(root)


def test_published_tree_loads_to_our_configs(published_tree):
    root, rewritten = published_tree
    assert set(rewritten.values()) == set(RELEASE_SIZES)
    assert rewritten["ade20k-150/Base-ADE20K-150.yaml"] == 512
    assert rewritten["cityscapes-19/Base-Cityscapes-19.yaml"] == 1024
    assert "!!python/object/apply:eval" in (root / "ade20k-150/Base-ADE20K-150.yaml").read_text()
    configs = sorted(root.rglob("*.yaml"))
    assert len(configs) > 30
    for path in configs:
        relative = path.relative_to(root)
        ours = load_config(str(REPO_ROOT / "configs" / relative))
        assert load_config(str(path)) == ours, relative


@pytest.mark.parametrize(
    "config, size",
    [
        ("ade20k-150/maskformer_R50_bs16_160k.yaml", 512),
        ("ade20k-150/swin/maskformer_swin_base_IN21k_384_bs16_160k_res640.yaml", 640),
        ("cityscapes-19/maskformer_R101_bs16_90k.yaml", 1024),
    ],
)
def test_published_config_through_train_net_and_demo(published_tree, tmp_path, config, size):
    root, _ = published_tree
    expected = [int(x * 0.1 * size) for x in range(5, 21)]
    configs = {}
    for name, path in (("ours", REPO_ROOT / "configs" / config), ("published", root / config)):
        args = train_net.argument_parser().parse_args(
            ["--config-file", str(path), "OUTPUT_DIR", str(tmp_path / name)]
        )
        assert not args.allow_unsafe_config
        configs[name] = train_net.setup(args)
    assert list(configs["published"].INPUT.MIN_SIZE_TRAIN) == expected
    assert configs["published"].OUTPUT_DIR != configs["ours"].OUTPUT_DIR
    assert _same_but_output_dir(configs["published"], configs["ours"])

    demo_args = demo.get_parser().parse_args(
        ["--config-file", str(root / config), "--input", "unused.jpg"]
    )
    demo_cfg = demo.setup_cfg(demo_args)
    assert list(demo_cfg.INPUT.MIN_SIZE_TRAIN) == expected
    assert demo_cfg == demo.setup_cfg(
        demo.get_parser().parse_args(
            ["--config-file", str(REPO_ROOT / "configs" / config), "--input", "unused.jpg"]
        )
    )


def _same_but_output_dir(a, b) -> bool:
    a, b = a.clone(), b.clone()
    a.defrost(), b.defrost()
    a.OUTPUT_DIR = b.OUTPUT_DIR = ""
    return a == b


def test_hostile_tag_in_a_file_is_refused_with_file_and_line(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.yaml"
    path.write_text(
        "INPUT:\n"
        "  MIN_SIZE_TEST: 512\n"
        f"  MIN_SIZE_TRAIN: !!python/object/apply:eval [\"__import__('os').system('touch {marker}')\"]\n"
    )
    with pytest.raises(ConfigError) as error:
        load_config(str(path))
    assert not marker.exists()
    message = str(error.value)
    assert message.startswith(f"Refusing to load config {path}, line 3: the expression ")
    assert re.search(r"is not evaluated: Call .*__import__.* is not allowed", message)
    assert "--allow-unsafe-config" in message

    huge = tmp_path / "huge.yaml"
    huge.write_text('INPUT:\n  MIN_SIZE_TRAIN: !!python/object/apply:eval ["range(10**12)"]\n')
    with pytest.raises(ConfigError, match=rf"{huge}, line 2: .*range\(\) of 1000000000000 items"):
        load_config(str(huge))

    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("INPUT:\n  MIN_SIZE_TRAIN: !!python/object/apply:eval {args: ['[1]']}\n")
    with pytest.raises(ConfigError, match=rf"{mapping}, line 2: .*needs a list holding one"):
        load_config(str(mapping))


def test_other_python_tags_stay_refused_and_allow_unsafe_evaluates_with_python(tmp_path):
    path = tmp_path / "tags.yaml"
    path.write_text("SOLVER:\n  BASE_LR: !!python/object/apply:float ['0.25']\n")
    with pytest.raises(ConfigError, match=rf"{path}, line 2: .*python/object/apply:float"):
        load_config(str(path))
    assert load_config(str(path), allow_unsafe=True).SOLVER.BASE_LR == 0.25
    outside = tmp_path / "outside.yaml"
    outside.write_text('SOLVER:\n  MAX_ITER: !!python/object/apply:eval ["len([1, 2])"]\n')
    with pytest.raises(ConfigError, match=r"Call 'len\(\[1, 2\]\)' is not allowed"):
        load_config(str(outside))
    assert load_config(str(outside), allow_unsafe=True).SOLVER.MAX_ITER == 2
