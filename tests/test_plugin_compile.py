"""The TensorRT plugin (engines/csrc/coattn_plugin.cpp) compiled, linked and driven host-side against real TensorRT
headers, on every CI run, without TensorRT's libraries or a GPU.

TensorRT itself cannot be installed here, but its public headers can: ``../shared/third_party/tensorrt/<version>/
include`` next to the repository (``$WEAKCLIP_TRT_HEADERS`` overrides the folder that holds the ``<version>/include``
folders).  For each of TensorRT 10.16 and 11.1:

1. **stub libnvinfer**: a tiny ``libnvinfer.so`` compiled here from the same headers, exporting only what a plugin
   needs (``getPluginRegistry``), with a registry that records ``registerCreator`` calls (the TensorRT 10 / 11
   ``IPluginRegistry`` interfaces differ: the deprecated IPluginCreator methods are gone in 11).  It is NOT TensorRT: nothing is parsed, built or run on a GPU.
2. **the real CMake target** ``weakclip_trt_plugin`` (``-DTENSORRT_ROOT`` = a folder with the real headers and the stub
   library, ``-DWEAKCLIP_REQUIRE_TENSORRT=ON``), built both ways: static registration (default) and
   ``-DWEAKCLIP_TRT_GET_CREATORS=ON``.  The plugin links with ``--no-undefined``, so a symbol the stub lacks fails the
   link (the stub then needs it too: that is the drift the test reports).  One build folder: the CUDA kernels are
   compiled once (one architecture), only the plugin is recompiled per TensorRT version / variant.
3. **exported symbols** (``nm -D``): ``getCreators`` only in the getCreators variant, no ``weakclip_*`` C API, no CUDA
   runtime, nothing else.
4. **host-side run**: a small C++ host (same headers, linked against the stub) ``dlopen``s the plugin, takes the
   creator (from the stub registry, or ``getCreators``) and calls what TensorRT calls before any GPU work: identity,
   field names, ``createPlugin`` (INT64 / FLOAT64 fields as parsers pass them; missing / invalid attributes refused),
   output count and types, format combinations, ``configurePlugin`` (packed-weight count checked against the Python
   packing of ``weakclip.model.plugin_names``), ``getWorkspaceSize``, ``onShapeChange``, serialisation round trip,
   ``clone``.  ``enqueue`` (the kernels) is not run: no GPU.

Skips, with the reason, when the header folder, nvcc, cmake, g++ or nm is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from kernel_emu.build import EmuUnavailable, cmake_generator_args, find_nvcc  # tests/ is on sys.path
from kernel_emu.symbols import PLUGIN_ENTRY_POINT, exported_symbols, unexpected_plugin_exports

from weakclip.model import plugin_names

REPO = Path(__file__).resolve().parents[1]
HEADERS_ENV = "WEAKCLIP_TRT_HEADERS"
DEFAULT_HEADERS = REPO.parent / "shared" / "third_party" / "tensorrt"
VERSIONS = ("10.16", "11.1")
# The VOC co-attention config the host run uses: E 512, W 256, 4 heads, L 3, MLP ratio 4.
E, W, HEADS, LAYERS, RATIO = 512, 256, 4, 3, 4

STUB_NVINFER = r"""
// Stub libnvinfer for compile/link/host tests of a TensorRT plugin.  NOT TensorRT: a plugin registry that records
// registerCreator calls, nothing else.
#include "NvInferRuntime.h"
#include <cstdint>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace {
struct Entry {
    IPluginCreatorInterface* creator;
    std::string ns;
};
std::vector<Entry>& entries() {
    static std::vector<Entry> e;
    return e;
}
class StubRegistry final : public IPluginRegistry {
public:
#if NV_TENSORRT_MAJOR < 11
    bool registerCreator(IPluginCreator&, AsciiChar const* const) noexcept override { return false; }
    IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override { *n = 0; return nullptr; }
    IPluginCreator* getPluginCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept
        override { return nullptr; }
    bool deregisterCreator(IPluginCreator const&) noexcept override { return false; }
#endif
    void setErrorRecorder(IErrorRecorder* const) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
    bool isParentSearchEnabled() const override { return false; }
    void setParentSearchEnabled(bool const) override {}
    PluginLibraryHandle loadLibrary(AsciiChar const*) noexcept override { return nullptr; }
    void deregisterLibrary(PluginLibraryHandle) noexcept override {}
    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const ns) noexcept override {
        entries().push_back({&creator, ns ? ns : ""});
        return true;
    }
    IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override { *n = 0; return nullptr; }
    IPluginCreatorInterface* getCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept
        override { return nullptr; }
    bool deregisterCreator(IPluginCreatorInterface const&) noexcept override { return false; }
    IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override { return nullptr; }
    int32_t releasePluginResource(AsciiChar const*) noexcept override { return -1; }
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override {
        *n = 0;
        return nullptr;
    }
};
}  // namespace

extern "C" __attribute__((visibility("default"))) IPluginRegistry* getPluginRegistry() noexcept {
    static StubRegistry registry;
    return &registry;
}
extern "C" __attribute__((visibility("default"))) int32_t stub_num_registered() {
    return static_cast<int32_t>(entries().size());
}
extern "C" __attribute__((visibility("default"))) IPluginCreatorInterface* stub_registered(int32_t i, char const** ns) {
    *ns = entries()[static_cast<size_t>(i)].ns.c_str();
    return entries()[static_cast<size_t>(i)].creator;
}
"""

PLUGIN_HOST = (
    r"""
// Host-side driver of the WeakCLIP plugin: the calls TensorRT makes before any GPU work.  Prints `key value` lines.
#include "NvInferRuntime.h"
#include <dlfcn.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using namespace nvinfer1;

extern "C" int32_t stub_num_registered();
extern "C" IPluginCreatorInterface* stub_registered(int32_t i, char const** ns);
using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);

static Dims dims(std::vector<int64_t> v) {
    Dims d{};
    d.nbDims = static_cast<int32_t>(v.size());
    for (size_t i = 0; i < v.size(); ++i) d.d[i] = v[i];
    return d;
}
static DynamicPluginTensorDesc dyn(std::vector<int64_t> v, DataType t) {
    DynamicPluginTensorDesc d{};
    d.desc.dims = dims(v);
    d.desc.type = t;
    d.desc.format = TensorFormat::kLINEAR;
    d.min = d.max = d.opt = dims(v);
    return d;
}
static PluginTensorDesc desc(std::vector<int64_t> v, DataType t) {
    PluginTensorDesc d{};
    d.dims = dims(v);
    d.type = t;
    d.format = TensorFormat::kLINEAR;
    return d;
}

int main(int argc, char** argv) {
    if (argc != 4) return 2;
    char const* path = argv[1];
    bool const getCreatorsMode = std::strcmp(argv[2], "getcreators") == 0;
    int64_t const P = std::atoll(argv[3]);  // packed weight count from the Python packing
    void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) { std::printf("dlopen_error %s\n", dlerror()); return 3; }
    std::printf("registered_at_load %d\n", stub_num_registered());
    std::printf("dlsym_getCreators %d\n", dlsym(h, "getCreators") != nullptr);
    std::printf("dlsym_weakclip_coattn_forward %d\n", dlsym(h, "weakclip_coattn_forward") != nullptr);
    IPluginCreatorInterface* ci = nullptr;
    char const* ns = "";
    if (getCreatorsMode) {
        auto fn = reinterpret_cast<GetCreators>(dlsym(h, "getCreators"));
        if (!fn) { std::printf("no_getCreators 1\n"); return 4; }
        int32_t n = 0;
        IPluginCreatorInterface* const* list = fn(n);
        std::printf("num_creators %d\n", n);
        if (n < 1) return 4;
        ci = list[0];
    } else {
        if (stub_num_registered() < 1) return 4;
        ci = stub_registered(0, &ns);
        std::printf("num_creators %d\n", stub_num_registered());
        std::printf("registered_namespace %s\n", ns);
    }
    InterfaceInfo info = ci->getInterfaceInfo();
    std::printf("creator_interface %s %d.%d\n", info.kind, info.major, info.minor);
    auto* c = static_cast<IPluginCreatorV3One*>(ci);
    std::printf("creator_name %s\ncreator_version %s\ncreator_namespace %s\n", c->getPluginName(),
                c->getPluginVersion(), c->getPluginNamespace());
    PluginFieldCollection const* names = c->getFieldNames();
    for (int32_t i = 0; i < names->nbFields; ++i)
        std::printf("field %s %d\n", names->fields[i].name, static_cast<int>(names->fields[i].type));

    // Fields as TensorRT's ONNX parser passes ONNX attributes: INT64 ints, FLOAT32 floats (FLOAT64 accepted too).
    int64_t width = %(W)d, heads = %(HEADS)d, layers = %(LAYERS)d, ratio = %(RATIO)d;
    double eps = 1e-5;
    std::vector<PluginField> f = {
        PluginField("coattn_width", &width, PluginFieldType::kINT64, 1),
        PluginField("coattn_heads", &heads, PluginFieldType::kINT64, 1),
        PluginField("coattn_layers", &layers, PluginFieldType::kINT64, 1),
        PluginField("coattn_mlp_ratio", &ratio, PluginFieldType::kINT64, 1),
        PluginField("layer_norm_eps", &eps, PluginFieldType::kFLOAT64, 1),
        PluginField("plugin_version", "1", PluginFieldType::kCHAR, 1),  // forwarded by parsers: ignored
    };
    PluginFieldCollection fc{static_cast<int32_t>(f.size()), f.data()};
    IPluginV3* p = c->createPlugin("coattn", &fc, TensorRTPhase::kBUILD);
    std::printf("create_ok %d\n", p != nullptr);
    if (!p) return 5;
    auto* core = static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* rt = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    std::printf("plugin_identity %s %s %s\n", core->getPluginName(), core->getPluginVersion(),
                core->getPluginNamespace());
    std::printf("nb_outputs %d\n", build->getNbOutputs());
    DataType in16[4] = {DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kHALF};
    DataType out{};
    int32_t const status16 = build->getOutputDataTypes(&out, 1, in16, 4);
    std::printf("output_type_fp16 %d %d\n", status16, static_cast<int>(out));
    DataType in8[4] = {DataType::kINT8, DataType::kINT8, DataType::kINT8, DataType::kINT8};
    std::printf("output_type_int8_status %d\n", build->getOutputDataTypes(&out, 1, in8, 4));

    int64_t const B = 2, K = 21, gh = 32, gw = 32;
    auto io = [&](DataType t, int64_t wcount) {
        return std::vector<DynamicPluginTensorDesc>{dyn({B, %(E)d}, t), dyn({B, %(E)d, gh, gw}, t), dyn({K, %(E)d}, t),
                                                    dyn({wcount}, t), dyn({B, K, gh, gw}, t)};
    };
    auto fp32 = io(DataType::kFLOAT, P);
    std::printf("format_fp32_all %d\n", [&] {
        for (int pos = 0; pos < 5; ++pos)
            if (!build->supportsFormatCombination(pos, fp32.data(), 4, 1)) return 0;
        return 1;
    }());
    auto mixed = fp32;
    mixed[1].desc.type = DataType::kHALF;
    std::printf("format_mixed %d\n", build->supportsFormatCombination(1, mixed.data(), 4, 1));
    auto i8 = io(DataType::kINT8, P);
    std::printf("format_int8 %d\n", build->supportsFormatCombination(0, i8.data(), 4, 1));
    auto chw4 = fp32;
    chw4[0].desc.format = TensorFormat::kCHW4;
    std::printf("format_chw4 %d\n", build->supportsFormatCombination(0, chw4.data(), 4, 1));

    std::printf("configure_ok %d\n", build->configurePlugin(fp32.data(), 4, fp32.data() + 4, 1));
    auto bad = io(DataType::kFLOAT, P + 1);
    std::printf("configure_wrong_weights %d\n", build->configurePlugin(bad.data(), 4, bad.data() + 4, 1));
    std::printf("workspace_fp32 %zu\n", build->getWorkspaceSize(fp32.data(), 4, fp32.data() + 4, 1));
    auto fp16 = io(DataType::kHALF, P);
    std::printf("workspace_fp16 %zu\n", build->getWorkspaceSize(fp16.data(), 4, fp16.data() + 4, 1));
    auto big = fp32;
    big[0].max = dims({8, %(E)d});
    big[1].max = dims({8, %(E)d, gh, gw});
    std::printf("workspace_fp32_maxB8 %zu\n", build->getWorkspaceSize(big.data(), 4, big.data() + 4, 1));

    PluginTensorDesc rin[4] = {desc({B, %(E)d}, DataType::kFLOAT), desc({B, %(E)d, gh, gw}, DataType::kFLOAT),
                               desc({K, %(E)d}, DataType::kFLOAT), desc({P}, DataType::kFLOAT)};
    PluginTensorDesc rout = desc({B, K, gh, gw}, DataType::kFLOAT);
    std::printf("shape_change_ok %d\n", rt->onShapeChange(rin, 4, &rout, 1));
    PluginTensorDesc wrong = desc({B, K + 1, gh, gw}, DataType::kFLOAT);
    std::printf("shape_change_wrong_output %d\n", rt->onShapeChange(rin, 4, &wrong, 1));

    PluginFieldCollection const* ser = rt->getFieldsToSerialize();
    std::printf("serialized_fields %d\n", ser->nbFields);
    for (int32_t i = 0; i < ser->nbFields; ++i) {
        PluginField const& s = ser->fields[i];
        if (s.type == PluginFieldType::kINT32)
            std::printf("serial %s int %d\n", s.name, *static_cast<int32_t const*>(s.data));
        else if (s.type == PluginFieldType::kFLOAT32)
            std::printf("serial %s float %g\n", s.name, *static_cast<float const*>(s.data));
    }
    IPluginV3* again = c->createPlugin("coattn", ser, TensorRTPhase::kRUNTIME);
    std::printf("recreate_ok %d\n", again != nullptr);
    IPluginV3* cl = p->clone();
    std::printf("clone_ok %d\n", cl != nullptr);

    int64_t badHeads = 3;  // head dim 256 / 3: refused
    std::vector<PluginField> f2 = f;
    f2[1] = PluginField("coattn_heads", &badHeads, PluginFieldType::kINT64, 1);
    PluginFieldCollection fc2{static_cast<int32_t>(f2.size()), f2.data()};
    std::printf("create_bad_heads_null %d\n", c->createPlugin("x", &fc2, TensorRTPhase::kBUILD) == nullptr);
    PluginFieldCollection fc3{3, f.data()};  // coattn_mlp_ratio missing
    std::printf("create_missing_attr_null %d\n", c->createPlugin("x", &fc3, TensorRTPhase::kBUILD) == nullptr);
    delete again;
    delete cl;
    delete p;
    std::printf("done 1\n");
    return 0;
}
""".replace("%(E)d", str(E))
    .replace("%(W)d", str(W))
    .replace("%(HEADS)d", str(HEADS))
    .replace("%(LAYERS)d", str(LAYERS))
    .replace("%(RATIO)d", str(RATIO))
)


def _headers_root() -> Path:
    return Path(os.environ.get(HEADERS_ENV) or DEFAULT_HEADERS)


def _tools() -> dict[str, str]:
    found = {"nvcc": find_nvcc(), "cmake": shutil.which("cmake"), "g++": shutil.which("g++"), "nm": shutil.which("nm")}
    missing = [k for k, v in found.items() if v is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} to build the plugin")
    return found  # type: ignore[return-value]


def _cuda_include(nvcc: str) -> Path:
    """The CUDA toolkit's include folder (TensorRT's headers include cuda_runtime_api.h)."""
    candidates = [Path(nvcc).resolve().parent.parent / "include"]
    candidates += [Path(os.environ[v]) / "include" for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    candidates += [Path("/usr/local/cuda/include"), Path("/usr/include")]
    for c in candidates:
        if (c / "cuda_runtime_api.h").is_file():
            return c
    pytest.skip(f"cuda_runtime_api.h not found in {[str(c) for c in candidates]} (set CUDA_HOME)")


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def plugin_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], dict]:
    """{(version, "static" | "getcreators"): {"plugin": .so, "host": host program, "configure": log}} for every
    TensorRT header folder present."""
    root = _headers_root()
    present = [v for v in VERSIONS if (root / v / "include" / "NvInfer.h").is_file()]
    if not present:
        pytest.skip(
            f"no TensorRT headers under {root} (expected <version>/include/NvInfer.h for {', '.join(VERSIONS)}); set "
            f"${HEADERS_ENV} to the folder holding them"
        )
    tools = _tools()
    try:
        generator = cmake_generator_args()
    except EmuUnavailable as e:
        pytest.skip(str(e))
    base = tmp_path_factory.mktemp("trt_plugin")
    build = base / "build"
    env = dict(os.environ, CUDACXX=tools["nvcc"])
    env.pop("TENSORRT_ROOT", None)  # the CMake default would pick it up
    cuda_include = _cuda_include(tools["nvcc"])
    out: dict[tuple[str, str], dict] = {}
    t0 = time.time()
    for version in present:
        include = root / version / "include"
        fake = base / f"tensorrt-{version}"  # include/ = the real headers, lib/libnvinfer.so = the stub
        (fake / "lib").mkdir(parents=True)
        (fake / "include").symlink_to(include, target_is_directory=True)
        stub_src = fake / "stub_nvinfer.cpp"
        stub_src.write_text(STUB_NVINFER)
        stub = fake / "lib" / "libnvinfer.so"
        flags = ["-std=c++17", "-O0", "-fPIC", f"-I{include}", f"-I{cuda_include}", "-Wno-deprecated-declarations"]
        _run([tools["g++"], *flags, "-shared", "-o", str(stub), str(stub_src)])
        host = fake / "plugin_host"
        (fake / "plugin_host.cpp").write_text(PLUGIN_HOST)
        _run(
            [
                tools["g++"],
                *flags,
                "-o",
                str(host),
                str(fake / "plugin_host.cpp"),
                str(stub),
                "-ldl",
                f"-Wl,-rpath,{stub.parent}",
            ]
        )
        for variant in ("static", "getcreators"):
            cfg = _run(
                [
                    tools["cmake"],
                    *generator,
                    "-S",
                    str(REPO),
                    "-B",
                    str(build),
                    "-DCMAKE_BUILD_TYPE=Release",
                    "-DCMAKE_CUDA_ARCHITECTURES=80",
                    f"-DTENSORRT_INCLUDE_DIR={include}",
                    f"-DTENSORRT_NVINFER_LIBRARY={stub}",
                    "-DWEAKCLIP_REQUIRE_TENSORRT=ON",
                    f"-DWEAKCLIP_TRT_GET_CREATORS={'ON' if variant == 'getcreators' else 'OFF'}",
                ],
                env=env,
            )
            _run([tools["cmake"], "--build", str(build), "--target", "weakclip_trt_plugin", "-j", "2"], env=env)
            so = base / f"libweakclip_trt_plugin-{version}-{variant}.so"
            shutil.copy2(build / "libweakclip_trt_plugin.so", so)
            out[(version, variant)] = {"plugin": so, "host": host, "configure": cfg.stdout + cfg.stderr}
    print(f"TensorRT {', '.join(present)}: stub, host and 2 plugin variants each built in {time.time() - t0:.1f}s")
    return out


def _host_run(build: dict, variant: str) -> dict[str, list[str]]:
    P = sum(int(_numel(s)) for s in plugin_names.packed_weight_shapes(LAYERS, E, W, W * RATIO))
    proc = subprocess.run(
        [str(build["host"]), str(build["plugin"]), variant, str(P)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"plugin host exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    got: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        got.setdefault(key, []).append(value)
    got["_stderr"] = [proc.stderr]
    return got


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


@pytest.mark.parametrize("version", VERSIONS)
def test_plugin_builds_against_tensorrt_headers(plugin_builds, version: str) -> None:
    if (version, "static") not in plugin_builds:
        pytest.skip(f"TensorRT {version} headers not present under {_headers_root()}")
    major = version.split(".")[0]
    for variant in ("static", "getcreators"):
        b = plugin_builds[(version, variant)]
        assert f"TensorRT {major} found" in b["configure"] and "building weakclip_trt_plugin" in b["configure"]
        assert b["plugin"].stat().st_size > 0


@pytest.mark.parametrize("variant", ["static", "getcreators"])
@pytest.mark.parametrize("version", VERSIONS)
def test_plugin_exports_only_the_tensorrt_entry_point(plugin_builds, version: str, variant: str) -> None:
    if (version, variant) not in plugin_builds:
        pytest.skip(f"TensorRT {version} headers not present under {_headers_root()}")
    symbols = exported_symbols(plugin_builds[(version, variant)]["plugin"])
    get_creators = variant == "getcreators"
    assert unexpected_plugin_exports(symbols, get_creators=get_creators) == []
    assert (PLUGIN_ENTRY_POINT in symbols) == get_creators
    assert not [s for s in symbols if s.startswith("weakclip_")], "the kernel C API must stay private in the plugin"


@pytest.mark.parametrize("variant", ["static", "getcreators"])
@pytest.mark.parametrize("version", VERSIONS)
def test_plugin_host_side_calls(plugin_builds, version: str, variant: str) -> None:
    if (version, variant) not in plugin_builds:
        pytest.skip(f"TensorRT {version} headers not present under {_headers_root()}")
    spec = plugin_names.plugin_spec()
    got = _host_run(plugin_builds[(version, variant)], variant)
    one = {k: v[0] for k, v in got.items()}
    assert one.get("done") == "1", got
    # registration: exactly one of the two mechanisms
    if variant == "static":
        assert one["registered_at_load"] == "1" and one["dlsym_getCreators"] == "0"
        assert one["registered_namespace"] == spec["plugin_namespace"]
    else:
        assert one["registered_at_load"] == "0" and one["dlsym_getCreators"] == "1" and one["num_creators"] == "1"
    assert one["dlsym_weakclip_coattn_forward"] == "0"
    assert one["creator_interface"] == "PLUGIN CREATOR_V3ONE 1.0"
    assert (one["creator_name"], one["creator_version"], one["creator_namespace"]) == (
        spec["op_type"],
        spec["plugin_version"],
        spec["plugin_namespace"],
    )
    assert one["plugin_identity"] == f"{spec['op_type']} {spec['plugin_version']} {spec['plugin_namespace']}"
    assert [f.split()[0] for f in got["field"]] == spec["attributes"]
    # build-time calls
    assert one["create_ok"] == "1" and one["nb_outputs"] == "1"
    assert one["output_type_fp16"] == "0 1"  # status 0, DataType::kHALF == 1
    assert one["output_type_int8_status"] == "-1"
    assert (one["format_fp32_all"], one["format_mixed"], one["format_int8"], one["format_chw4"]) == ("1", "0", "0", "0")
    assert one["configure_ok"] == "0", got["_stderr"]
    assert one["configure_wrong_weights"] == "-1" and "weights has" in got["_stderr"][0]
    ws32, ws16, ws_big = int(one["workspace_fp32"]), int(one["workspace_fp16"]), int(one["workspace_fp32_maxB8"])
    assert 0 < ws16 < ws32 < ws_big, (ws16, ws32, ws_big)  # from the max shape; fp16 needs half the bytes
    # runtime calls (host side only)
    assert one["shape_change_ok"] == "0" and one["shape_change_wrong_output"] == "-1"
    serial = {s.split()[0]: s.split()[2] for s in got["serial"]}
    assert serial == {
        "coattn_width": str(W),
        "coattn_heads": str(HEADS),
        "coattn_layers": str(LAYERS),
        "coattn_mlp_ratio": str(RATIO),
        "layer_norm_eps": "1e-05",
    }
    assert one["recreate_ok"] == "1" and one["clone_ok"] == "1"
    assert one["create_bad_heads_null"] == "1" and one["create_missing_attr_null"] == "1"
