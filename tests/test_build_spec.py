"""Static checks of the APK build (build.spec): recipes, import coverage, permissions, LiteRT ops.

No network and no Android SDK: the p4a recipe names are a committed list (p4a_recipes/p4a_recipe_names.txt,
from python-for-android 2026.5.9) and the LiteRT op allow-list is committed too.
"""
from __future__ import annotations

import ast
import configparser
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "build.spec"
RECIPES = ROOT / "p4a_recipes"

#: Requirements p4a pip-installs (no recipe needed) because they are pure Python wheels.
PURE_PYTHON = {
    "sqlite-utils": "catalogue DB layer (pure Python)",
    "click": "sqlite-utils dependency (pure Python)",
    "click-default-group": "sqlite-utils dependency (pure Python)",
    "sqlite-fts4": "sqlite-utils dependency (pure Python)",
    "tabulate": "sqlite-utils dependency (pure Python)",
    "python-dateutil": "sqlite-utils dependency (pure Python)",
    "tzdata": "python-dateutil 4 dependency (pure Python data)",
    "pluggy": "sqlite-utils dependency (pure Python)",
    "six": "python-dateutil dependency on older versions (pure Python)",
}
#: Dependencies declared by shipped packages that the device deliberately does not ship.
NOT_SHIPPED_DEPS = {
    "pip": "sqlite-utils declares pip only for its `sqlite-utils install` CLI command, never used on the device",
}
#: Third-party imports in the device code that are NOT in the APK, with the reason.
NOT_ON_DEVICE = {
    "ai_edge_litert": "desktop TFLite backend; on Android the LiteRT Java runtime (gradle dependency) runs the model",
    "onnxruntime": "desktop ONNX backend only",
}
#: Import name -> requirement (distribution or recipe) name.
IMPORT_TO_REQ = {"PIL": "pillow", "jnius": "pyjnius", "sqlite_utils": "sqlite-utils", "dateutil": "python-dateutil",
                 "pyzbar": "pyzbar", "android": "android", "kivy": "kivy", "numpy": "numpy",
                 "hnswlib": "hnswlib", "cryptography": "cryptography"}
#: The device code: the runtime, the app and the sync client (not training/export/hub/benchmarks).
DEVICE_SOURCES = ["edge_app/*.py", "edge_app/runtime/*.py", "edge_app/app/*.py", "edge_app/app/screens/*.py",
                  "sync/client.py", "sync/apply.py", "sync/package.py", "sync/embedder.py", "sync/transport.py",
                  "sync/upload.py", "sync/schedule.py", "sync/background.py"]
FIRST_PARTY = {"edge_app", "sync", "training", "export", "benchmarks"}


def _speclist(app, key: str) -> list[str]:
    return [x.strip().lower() for x in app.get(key, "").split(",") if x.strip()]


def buildozer_ships(rel: str, app=None) -> bool:
    """Whether buildozer copies the file at ``rel`` (relative to source.dir) into the APK: a port of the filter
    in buildozer 1.5.0's ``Buildozer._copy_application_sources``. ``include_patterns`` only takes back what
    ``exclude_dirs``/``exclude_patterns`` removed, and every file still needs an ``include_exts`` extension."""
    import fnmatch
    import posixpath

    app = app if app is not None else spec()["app"]
    exts, no_exts = _speclist(app, "source.include_exts"), _speclist(app, "source.exclude_exts")
    no_dirs, no_pats = _speclist(app, "source.exclude_dirs"), _speclist(app, "source.exclude_patterns")
    pats = _speclist(app, "source.include_patterns")
    folder, fn = posixpath.split(rel)
    if any(part.startswith(".") for part in folder.split("/") if part):
        return False
    if folder:
        root = folder.lower() + "/"
        out = any(root.startswith(d if d.endswith("/") else d + "/") for d in no_dirs)
        if not out:
            out = any(fnmatch.fnmatch(root, p) for p in no_pats)
        if any(fnmatch.fnmatch(root, p) for p in pats):
            out = False
        if out:
            return False
    if fn.startswith("."):
        return False
    dfn = posixpath.join(folder.lower() + "/", fn) if folder else fn.lower()
    out = any(fnmatch.fnmatch(dfn, p) for p in no_pats)
    if any(fnmatch.fnmatch(dfn, p) for p in pats):
        out = False
    if out:
        return False
    ext = posixpath.splitext(fn)[1][1:].lower()
    if ext and ((exts and ext not in exts) or ext in no_exts):
        return False
    return True


def shipped_files() -> set[str]:
    """The repository files buildozer would put in the APK (git-ignored build output and venv left out)."""
    import os

    out = set()
    for dirpath, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in (".git", ".venv", "__pycache__", "runs", "starter_bundle")]
        for fn in files:
            rel = str((Path(dirpath) / fn).relative_to(ROOT))
            if buildozer_ships(rel):
                out.add(rel)
    return out


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def spec() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(SPEC)
    return cp


def requirements() -> dict[str, str | None]:
    out = {}
    for item in spec()["app"]["requirements"].split(","):
        name, _, version = item.strip().partition("==")
        out[norm(name)] = version or None
    return out


def p4a_recipe_names() -> set[str]:
    lines = (RECIPES / "p4a_recipe_names.txt").read_text().splitlines()
    return {norm(x.strip()) for x in lines if x.strip() and not x.startswith("#")}


def local_recipes() -> set[str]:
    return {norm(p.parent.name) for p in RECIPES.glob("*/__init__.py")}


def device_imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for pattern in DEVICE_SOURCES:
        for f in ROOT.glob(pattern):
            if f.name in ("commands.py", "screenshots.py", "preview.py"):
                continue  # CLI glue and dev tools, not shipped code paths
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for n in names:
                    top = n.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                        found.setdefault(top, set()).add(str(f.relative_to(ROOT)))
    return found


def dist_requires(dist: str) -> list[str]:
    """Unconditional dependencies of an installed distribution (extras and non-Linux markers skipped)."""
    out = []
    for req in md.requires(dist) or []:
        name, _, marker = req.partition(";")
        if "extra ==" in marker or 'sys_platform == "win32"' in marker or "python_version < \"3.11\"" in marker:
            continue
        out.append(norm(re.split(r"[ <>=!~\[(]", name.strip(), maxsplit=1)[0]))
    return out


# ------------------------------------------------------------------------------------ tests
def test_every_requirement_has_a_recipe_or_is_pure_python() -> None:
    p4a, local = p4a_recipe_names(), local_recipes()
    missing = [r for r in requirements() if r not in p4a and r not in local and r not in PURE_PYTHON]
    assert not missing, f"no p4a recipe, no local recipe and not known pure Python: {missing}"


def test_pure_python_requirements_are_pure_and_pinned_to_the_venv() -> None:
    reqs = requirements()
    for name in (r for r in reqs if r in PURE_PYTHON):
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            assert "none-any.whl" in PURE_PYTHON[name], f"{name}: not installed and no wheel evidence recorded"
            assert reqs[name], f"{name} is not in the venv, so build.spec must pin it"
            continue
        wheel = dist.read_text("WHEEL") or ""
        assert "Root-Is-Purelib: true" in wheel, f"{name} is not a pure-Python wheel"
        if reqs[name] is not None:
            assert reqs[name] == dist.version, f"{name} pinned {reqs[name]} but the venv has {dist.version}"


def test_pure_python_dependency_trees_are_complete() -> None:
    """sqlite-utils' dependencies (recursively) are all shipped, or excluded with a reason."""
    reqs = set(requirements())
    seen, todo = set(), [r for r in reqs if r in PURE_PYTHON]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            deps = dist_requires(name)
        except md.PackageNotFoundError:  # not in the venv: nothing to follow
            continue
        for dep in deps:
            assert dep in reqs or dep in NOT_SHIPPED_DEPS, f"{name} needs {dep}, which build.spec does not ship"
            if dep in reqs:
                todo.append(dep)
    assert {"click", "click-default-group", "sqlite-fts4", "tabulate", "python-dateutil", "pluggy"} <= seen


def test_requirements_cover_the_device_code_imports() -> None:
    reqs = set(requirements())
    imports = device_imports()
    assert {"numpy", "PIL", "sqlite_utils", "hnswlib", "cryptography", "kivy"} <= set(imports)
    for top, files in sorted(imports.items()):
        if top in NOT_ON_DEVICE:
            continue
        assert top in IMPORT_TO_REQ, f"{top} (imported by {sorted(files)}) has no requirement mapping"
        assert norm(IMPORT_TO_REQ[top]) in reqs, f"{top} (imported by {sorted(files)}) is not in requirements"


def test_stdlib_modules_with_native_parts_have_their_recipes() -> None:
    reqs = set(requirements())
    assert "sqlite3" in reqs  # CatalogueDB and Outbox use sqlite3
    assert "openssl" in reqs  # hashlib (bundle sha256) and ssl (hub over https)


def test_android_settings() -> None:
    app = spec()["app"]
    perms = {p.strip() for p in app["android.permissions"].split(",")}
    assert {"CAMERA", "INTERNET", "ACCESS_NETWORK_STATE"} <= perms
    assert app["android.archs"].strip() == "arm64-v8a"
    assert app["p4a.local_recipes"].strip() == "./p4a_recipes"
    # p4a pinned to the release whose recipe names are committed (an unpinned build follows master)
    wheel = re.search(r"python_for_android-(\d{4})\.(\d+)\.(\d+)-py3",
                      (RECIPES / "p4a_recipe_names.txt").read_text())
    assert wheel, "the recipe list names the python-for-android wheel it came from"
    year, month, day = (int(x) for x in wheel.groups())
    assert app["p4a.branch"].strip() == f"v{year}.{month:02d}.{day:02d}"
    assert "kv" in app["source.include_exts"].split(",")
    assert (ROOT / app.get("source.main", "main.py")).is_file()


def test_every_kv_file_is_included() -> None:
    kv = [str(p.relative_to(ROOT)) for p in (ROOT / "edge_app").rglob("*.kv")]
    assert kv
    for f in kv:
        assert buildozer_ships(f), f"{f} would not be packaged"


#: the files of a starter folder (`partlens demo --starter-bundle starter_bundle`), as the app seeds from them
STARTER_FILES = ["starter_bundle/catalogue.db", "starter_bundle/keyring.json", "starter_bundle/active.json",
                 *(f"starter_bundle/bundles/v1-0123456789ab/{n}" for n in
                   ("manifest.json", "manifest.sig", "model.tflite", "embeddings.npy", "embeddings.json",
                    "index.hnsw"))]


def test_the_starter_bundle_ships_whole() -> None:
    """buildozer drops any file whose extension is not in include_exts, even one an include pattern names: the
    APK had no catalogue.db, model.tflite, manifest.sig, embeddings.npy or index.hnsw, so it started empty."""
    from edge_app.bundle import MANIFEST_NAME, SIGNATURE_NAME

    assert {MANIFEST_NAME, SIGNATURE_NAME} <= {Path(f).name for f in STARTER_FILES}
    dropped = [f for f in STARTER_FILES if not buildozer_ships(f)]
    assert not dropped, f"not packaged in the APK: {dropped}"


def test_desktop_code_and_build_output_do_not_ship() -> None:
    shipped = shipped_files()
    assert "main.py" in shipped and "edge_app/runtime/identify.py" in shipped
    leaked = sorted(f for f in shipped if f.startswith(("training/", "export/", "sync/hub/", "tests/", "benchmarks/",
                                                          "edge_app/demo/", "partlens.egg-info/", "docs/",
                                                          "p4a_recipes/")))
    assert not leaked, f"desktop-only files would be packaged: {leaked[:10]}"


#: first-party packages the APK does not ship, and why no device code path needs them at import time
NOT_SHIPPED = {
    "sync.hub": "the hub runs on the desktop; only InMemoryTransport (tests, same machine) imports it, lazily",
    "export": "export runs on the desktop; reached only through the hub",
    "training": "training runs on the desktop",
    "benchmarks": "measurements, not the app",
}


def _module_file(mod: str) -> Path | None:
    p = ROOT / Path(*mod.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    return p.with_suffix(".py") if p.with_suffix(".py").is_file() else None


def _first_party_imports(f: Path) -> list[tuple[str, bool]]:
    """(module, at module level?) for every first-party import in ``f``, relative ones resolved."""
    rel = f.relative_to(ROOT)
    pkg = list(rel.parent.parts)
    tree = ast.parse(f.read_text(), str(f))
    top_level = {id(n) for n in tree.body} | {id(c) for n in tree.body if isinstance(n, ast.If) for c in n.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = pkg[:len(pkg) - node.level + 1] if node.level else []
            m = ".".join(base + ([node.module] if node.module else []))
            mods = [m] + [f"{m}.{a.name}" for a in node.names]
        else:
            continue
        out += [(m, id(node) in top_level) for m in mods if m.split(".")[0] in FIRST_PARTY]
    return out


def test_every_module_the_app_imports_is_packaged() -> None:
    """Follow first-party imports from main.py and the Android services (module level and lazy): each module
    reached must match the APK's include patterns, except packages that are not shipped, which device code may
    only import lazily."""
    app = spec()["app"]
    # the entry points: the app, and each Android service (`services = Name:path.py:...`)
    entries = [ROOT / "main.py"] + [ROOT / s.split(":")[1] for s in app.get("services", "").split(",") if s.strip()]
    assert len(entries) >= 2 and all(e.is_file() for e in entries), entries
    for e in entries:
        assert buildozer_ships(str(e.relative_to(ROOT))), f"{e} is not packaged"
    seen: dict[Path, str] = {}
    todo = list(entries)
    while todo:
        f = todo.pop()
        for mod, at_top in _first_party_imports(f):
            parts = mod.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                skip = next((k for k in NOT_SHIPPED if name == k or name.startswith(k + ".")), None)
                if skip:
                    assert not at_top, f"{f.relative_to(ROOT)} imports {name} at module level ({NOT_SHIPPED[skip]})"
                    break
                mf = _module_file(name)
                if mf is not None and mf not in seen:
                    seen[mf] = str(f.relative_to(ROOT))
                    todo.append(mf)
    assert len(seen) > 30
    missing = [f"{m.relative_to(ROOT)} (imported by {by})" for m, by in sorted(seen.items())
               if not buildozer_ships(str(m.relative_to(ROOT)))]
    assert not missing, "not packaged in the APK: " + "; ".join(missing)


def test_hnswlib_recipe_disables_march_native() -> None:
    text = (RECIPES / "hnswlib" / "__init__.py").read_text()
    assert 'env["HNSWLIB_NO_NATIVE"] = "1"' in text
    tree = ast.parse(text)
    version = next(n.value.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                   and any(getattr(t, "id", "") == "version" for t in n.targets))
    assert version == md.version("hnswlib"), "the recipe builds the hnswlib version the venv tests"


def test_litert_gradle_dependency_matches_the_venv_runtime() -> None:
    deps = spec()["app"]["android.gradle_dependencies"]
    m = re.search(r"com\.google\.ai\.edge\.litert:litert:([0-9.]+)", deps)
    assert m, "the LiteRT Java runtime must be a gradle dependency"
    try:
        venv = md.version("ai-edge-litert")
    except md.PackageNotFoundError:
        pytest.skip("ai-edge-litert is not installed: cannot compare versions")
    # LiteRT publishes the pip wheel and the Maven AAR from the same release tag (docs/app.md).
    assert m.group(1) == venv
    assert (RECIPES / f"litert-{venv}-builtin-ops.txt").is_file(), "no op allow-list for this LiteRT version"


# ------------------------------------------------------------------------------------ model ops
def allowed_ops(version: str) -> dict[str, int]:
    out = {}
    for line in (RECIPES / f"litert-{version}-builtin-ops.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, code = line.split()
            out[name] = int(code)
    return out


def model_ops(data: bytes) -> list[tuple[str, int]]:
    """(operator name, version) of every operator code in a .tflite flatbuffer (CUSTOM as 'CUSTOM:<name>')."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAsModel(data, 0)
    ops = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        name = names.get(code, f"UNKNOWN_{code}")
        if name == "CUSTOM":
            name = "CUSTOM:" + (oc.CustomCode() or b"").decode()
        ops.append((name, oc.Version()))
    return ops


def unsupported_ops(data: bytes, version: str) -> list[str]:
    allowed = allowed_ops(version)
    return [name for name, _v in model_ops(data) if name not in allowed]


def tiny_model(op_names: list[str], custom: str | None = None) -> bytes:
    """A structurally valid .tflite flatbuffer holding the given operator codes (built with the schema)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT()
    model.version = 3
    model.buffers = [schema.BufferT()]
    codes = []
    for name in op_names:
        oc = schema.OperatorCodeT()
        code = getattr(schema.BuiltinOperator, name)
        oc.builtinCode = code
        oc.deprecatedBuiltinCode = min(code, schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
        oc.version = 1
        if name == "CUSTOM":
            oc.customCode = custom
        codes.append(oc)
    model.operatorCodes = codes
    sub = schema.SubGraphT()
    t = schema.TensorT()
    t.shape, t.type, t.buffer, t.name = [1, 4], schema.TensorType.FLOAT32, 0, "x"
    sub.tensors = [t]
    sub.inputs, sub.outputs = [0], [0]
    sub.operators = []
    for i in range(len(codes)):
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = i, [0], [0]
        sub.operators.append(op)
    model.subgraphs = [sub]
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def litert_version() -> str:
    m = re.search(r"litert:([0-9.]+)", spec()["app"]["android.gradle_dependencies"])
    assert m
    return m.group(1)


def test_op_allow_list_matches_the_installed_schema() -> None:
    try:
        installed = md.version("ai-edge-litert")
    except md.PackageNotFoundError:
        pytest.skip("ai-edge-litert is not installed")
    if installed != litert_version():
        pytest.skip(f"venv has ai-edge-litert {installed}, build.spec pins {litert_version()}")
    from ai_edge_litert import schema_py_generated as schema

    enum = {k: v for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    for k in ("CUSTOM", "DELEGATE", "PLACEHOLDER_FOR_GREATER_OP_CODES"):
        enum.pop(k)
    assert allowed_ops(installed) == enum


def test_op_check_accepts_a_mobilenet_style_model_and_flags_custom_ops() -> None:
    pytest.importorskip("ai_edge_litert")
    version = litert_version()
    good = tiny_model(["CONV_2D", "DEPTHWISE_CONV_2D", "MEAN", "FULLY_CONNECTED", "L2_NORMALIZATION"])
    assert [n for n, _ in model_ops(good)] == ["CONV_2D", "DEPTHWISE_CONV_2D", "MEAN", "FULLY_CONNECTED",
                                               "L2_NORMALIZATION"]
    assert unsupported_ops(good, version) == []
    bad = tiny_model(["CONV_2D", "CUSTOM"], custom="FlexErf")
    assert unsupported_ops(bad, version) == ["CUSTOM:FlexErf"]


def shipped_models() -> list[Path]:
    return sorted((ROOT / "starter_bundle").rglob("*.tflite")) if (ROOT / "starter_bundle").is_dir() else []


def test_shipped_model_uses_only_supported_ops() -> None:
    pytest.importorskip("ai_edge_litert")
    models = shipped_models()
    if not models:
        pytest.skip("no starter_bundle/**/*.tflite yet (fill it with `partlens demo --starter-bundle starter_bundle`)")
    for m in models:
        bad = unsupported_ops(m.read_bytes(), litert_version())
        assert not bad, f"{m}: ops not in LiteRT {litert_version()}: {bad}"


@pytest.mark.slow
def test_default_model_architecture_int8_uses_only_supported_ops() -> None:
    """The architecture the demo ships by default (DemoConfig().model, int8 via litert-torch), converted here."""
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("litert_torch")
    import numpy as np

    from edge_app.demo import DemoConfig
    from export.tflite_export import convert_int8
    from training.models import create_model

    model = create_model(DemoConfig().model, num_classes=4, pretrained=False, image_size=64).eval()
    calib = np.random.default_rng(0).normal(0, 0.5, (8, 3, 64, 64)).astype(np.float32)
    data = convert_int8(model, calib)
    ops = [n for n, _ in model_ops(data)]
    assert "CONV_2D" in ops and "DEPTHWISE_CONV_2D" in ops
    assert unsupported_ops(data, litert_version()) == []
