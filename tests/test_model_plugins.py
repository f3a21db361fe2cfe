"""Client-model plug-ins: the decorator, and entry points from another package.

The entry-point tests need no installation: each writes a ``*.dist-info`` folder (what
pip writes) into a temporary directory on ``sys.path``, with the ``entry_points.txt``
generated from the fixture package's own ``pyproject.toml``, and puts the fixture's
``src`` on ``sys.path``. A slow test also installs the fixture for real with pip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch

from fedmuscle_flwr import _registry
from fedmuscle_flwr.models import (
    ENTRY_POINT_GROUP,
    MODELS,
    ClientModel,
    PluginWarning,
    build_client_model,
    list_client_models,
    register_client_model,
)
from tests.test_models_contract import NUM_CLASSES, D, check_contract

FIXTURE = Path(__file__).parent / "fixtures" / "fedmuscle_plugin_example"
PLUGIN = "example-mlp"
EXAMPLE_DIST = "fedmuscle-plugin-example"


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread() -> Iterator[None]:
    """Tiny models: thread start-up and spinning cost more than they save, and on a busy
    2-core machine several intra-op threads make these tests many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_dist_info(site: Path, dist: str, entry_points: dict[str, str]) -> None:
    """Write the metadata pip would write for an installed distribution."""
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


def fixture_entry_points() -> dict[str, str]:
    project = tomllib.loads((FIXTURE / "pyproject.toml").read_text())["project"]
    return dict(project["entry-points"][ENTRY_POINT_GROUP])


def installed_elsewhere(ep: EntryPoint, site: Path) -> bool:
    """Whether ``ep`` is the example plug-in's, from an installation outside ``site``."""
    dist = ep.dist
    return (
        dist is not None
        and dist.metadata["Name"] == EXAMPLE_DIST
        and Path(str(dist.locate_file(""))) != site
    )


def _forget_example_modules() -> None:
    for module in [m for m in sys.modules if m.startswith(("fedmuscle_plugin_example", "broken_"))]:
        del sys.modules[module]


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A site dir on sys.path for fake installs; the registry forgets them afterwards.

    A real installation of the example plug-in (``pip install`` of the documented
    example) is hidden meanwhile: only the fake installs in the site dir count.
    """
    site = tmp_path / "site"
    site.mkdir()
    read_group = _registry.entry_points

    def fake_installs_only(**selection: str) -> list[EntryPoint]:
        return [ep for ep in read_group(**selection) if not installed_elsewhere(ep, site)]

    monkeypatch.setattr(_registry, "entry_points", fake_installs_only)
    MODELS.remove(PLUGIN)  # registered from a real installation, if any
    _forget_example_modules()
    before = set(list_client_models())
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(FIXTURE / "src"))
    yield site
    for name in set(MODELS.names()) - before:
        MODELS.remove(name)
    _forget_example_modules()
    MODELS._plugins_loaded = False  # the next lookup reads the real installations again


def test_fixture_declares_the_documented_entry_point() -> None:
    assert fixture_entry_points() == {PLUGIN: "fedmuscle_plugin_example:build_example_mlp"}
    docs = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    assert f'{PLUGIN} = "fedmuscle_plugin_example:build_example_mlp"' in docs


def test_entry_point_plugin_is_built_by_name(plugin_site: Path) -> None:
    MODELS.load_plugins(force=True)
    assert PLUGIN not in list_client_models()  # importable, but not installed: not found
    write_dist_info(plugin_site, "fedmuscle-plugin-example", fixture_entry_points())
    assert PLUGIN not in list_client_models()  # the group is read once ...
    MODELS.load_plugins(force=True)  # ... until asked again
    assert PLUGIN in list_client_models()
    assert "entry point 'example-mlp'" in MODELS.source(PLUGIN)

    for task in ("image-classification", "multi-label-classification", "semantic-segmentation"):
        model = build_client_model(PLUGIN, task=task, num_classes=NUM_CLASSES, embed_dim=D)
        assert type(model).__module__ == "fedmuscle_flwr.models.base"
        assert type(model.encoder).__module__ == "fedmuscle_plugin_example"
        check_contract(model, task)
    lora = build_client_model(
        PLUGIN,
        task="image-classification",
        num_classes=NUM_CLASSES,
        embed_dim=D,
        lora={"rank": 2},
    )
    assert {n for n, p in lora.encoder.named_parameters() if p.requires_grad} == {
        "backbone.0.lora_A.default.weight",
        "backbone.0.lora_B.default.weight",
        "backbone.2.lora_A.default.weight",
        "backbone.2.lora_B.default.weight",
    }


def test_a_real_installation_of_the_example_is_hidden_from_these_tests(
    plugin_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_site = tmp_path / "site-packages"  # after the fake site, as an installed package is
    write_dist_info(real_site, EXAMPLE_DIST, fixture_entry_points())
    monkeypatch.setattr(sys, "path", [*sys.path, str(real_site)])
    MODELS.load_plugins(force=True)
    assert PLUGIN not in list_client_models()
    write_dist_info(plugin_site, EXAMPLE_DIST, fixture_entry_points())
    MODELS.load_plugins(force=True)
    assert PLUGIN in list_client_models()


def test_plugins_are_read_lazily_on_first_lookup(plugin_site: Path) -> None:
    write_dist_info(plugin_site, "fedmuscle-plugin-example", fixture_entry_points())
    MODELS._plugins_loaded = False  # as in a fresh process, before any lookup
    assert "fedmuscle_plugin_example" not in sys.modules
    model = build_client_model(PLUGIN, task="image-classification", num_classes=2)
    assert isinstance(model, ClientModel)
    assert "fedmuscle_plugin_example" in sys.modules


def test_broken_plugin_warns_and_the_registry_keeps_working(plugin_site: Path) -> None:
    write_dist_info(plugin_site, "fedmuscle-plugin-example", fixture_entry_points())
    write_dist_info(
        plugin_site,
        "broken-plugin",
        {"broken-model": "broken_missing_module:build", "vit": "fedmuscle_plugin_example:X"},
    )
    with pytest.warns(PluginWarning) as record:
        MODELS.load_plugins(force=True)
    messages = [str(w.message) for w in record]
    assert any("'broken-model'" in m and "could not be loaded" in m for m in messages)
    assert any("'vit'" in m and "already registered" in m for m in messages)
    assert "broken-model" not in list_client_models()
    assert PLUGIN in list_client_models()
    assert MODELS.source("vit") == "code"  # a plug-in does not shadow a built-in


def test_decorator_registration_duplicates_and_unknown_names() -> None:
    @register_client_model("test-decorated")
    def build_a(**cfg: object) -> ClientModel:
        raise AssertionError("never called")

    try:
        assert "test-decorated" in list_client_models()
        with pytest.raises(ValueError, match="already registered"):
            register_client_model("test-decorated")(build_a)
        with pytest.raises(ValueError, match="'vit' is already registered"):
            register_client_model("vit")(build_a)
        register_client_model("test-decorated", exist_ok=True)(lambda **cfg: object())
        with pytest.raises(TypeError, match="not a ClientModel"):
            build_client_model("test-decorated")
        with pytest.raises(TypeError, match="builder callable"):
            register_client_model("test-not-callable")(42)  # type: ignore[type-var]
        with pytest.raises(ValueError, match="non-empty"):
            register_client_model(" ")(build_a)
    finally:
        MODELS.remove("test-decorated")
    with pytest.raises(KeyError, match="unknown client model 'test-decorated'") as info:
        build_client_model("test-decorated")
    assert "vit" in str(info.value) and ENTRY_POINT_GROUP in str(info.value)


def test_seed_covers_plugin_builders() -> None:
    # The seed wraps every builder, plug-ins included: two builds with one seed agree.
    sys.path.insert(0, str(FIXTURE / "src"))
    try:
        from fedmuscle_plugin_example import build_example_mlp

        register_client_model("test-seeded")(build_example_mlp)
        a = build_client_model("test-seeded", task="image-classification", num_classes=2, seed=3)
        b = build_client_model("test-seeded", task="image-classification", num_classes=2, seed=3)
        for x, y in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(x, y)
    finally:
        MODELS.remove("test-seeded")
        sys.path.remove(str(FIXTURE / "src"))
        sys.modules.pop("fedmuscle_plugin_example", None)


@pytest.mark.slow
def test_pip_installed_plugin_is_found_in_a_fresh_process(tmp_path: Path) -> None:
    # Install from a copy: setuptools writes build/ and *.egg-info next to the sources,
    # and an egg-info under the fixture's src/ would register the plug-in by itself.
    source = tmp_path / "source"
    shutil.copytree(FIXTURE, source, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        timeout=300,
    )
    code = (
        "from fedmuscle_flwr.models import build_client_model, list_client_models\n"
        "assert 'example-mlp' in list_client_models(), list_client_models()\n"
        "m = build_client_model('example-mlp', task='image-classification', num_classes=3)\n"
        "print(type(m.encoder).__module__)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(target), str(Path(__file__).parents[1])]),
    }
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.stdout.strip() == "fedmuscle_plugin_example"
