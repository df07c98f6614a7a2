#!/usr/bin/env bash
# flash-attn-4 (FlashAttention 4, CuTe DSL) for the lent GPU machine, which has no network and takes at
# most 64 MiB of carried files per call. Its CUTLASS DSL library wheel alone is 92 MB, so the wheels
# travel in two calls, as two git-ignored folders:
#   benchmarks/gpu_flash4.sh prepare   # here: download the wheels, repack the big one (tar.xz, 64 MB), split
#                                      #   it into .fa4a/ (part 1) and .fa4b/ (part 2 + the other wheels)
#   bash benchmarks/gpu_flash4.sh stage     # GPU call 1, carry [".fa4a"]: keeps part 1 in /tmp/stage
#   bash benchmarks/gpu_flash4.sh install   # GPU call 2 on the same warm machine, carry [".fa4b", ".whl"]:
#                                      #   installs everything into /tmp/site (with the peers' .whl/)
# then: export PYTHONPATH=/tmp/site/nvidia_cutlass_dsl/dsl_packages before gpu_throughput.sh (which puts
# /tmp/site first); cptrain's attention "auto" then uses FlashAttention 4.
set -euo pipefail
cd "$(dirname "$0")/.."
S=/tmp/site
case "${1:-}" in
  prepare)
    tmp=$(mktemp -d)
    dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
             --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
             --platform manylinux2014_x86_64 -d "$tmp" "$@"; }
    dl flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
       nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 quack-kernels==0.6.5 \
       apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5
    mkdir -p "$tmp/cu13" .fa4a .fa4b
    (cd "$tmp/cu13" && unzip -q "$tmp"/nvidia_cutlass_dsl_libs_cu13-*.whl && tar cf - . | xz -9 -T0 > "$tmp/cu13.tar.xz")
    rm -f .fa4a/* .fa4b/*
    split -b 44M "$tmp/cu13.tar.xz" "$tmp/cu13.part."
    mv "$tmp/cu13.part.aa" .fa4a/ && mv "$tmp/cu13.part.ab" .fa4b/
    find "$tmp" -maxdepth 1 -name '*.whl' ! -name 'nvidia_cutlass_dsl_libs_cu13-*' -exec mv {} .fa4b/ \;
    rm -rf "$tmp"
    du -sh .fa4a .fa4b ;;
  stage)
    mkdir -p /tmp/stage && cp .fa4a/cu13.part.aa /tmp/stage/ && echo "part 1 staged in /tmp/stage" ;;
  install)
    [ -f /tmp/stage/cu13.part.aa ] || { echo "part 1 missing: run 'stage' first on this machine (it was released?)"; exit 3; }
    # wheels first: pip --target --upgrade would replace the nvidia_cutlass_dsl folder the tar adds to
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $S .fa4b/*.whl \
      $(compgen -G ".whl/*.whl" || true)
    cat /tmp/stage/cu13.part.aa .fa4b/cu13.part.ab | tar xJf - -C $S
    PYTHONPATH=$S:$S/nvidia_cutlass_dsl/dsl_packages python3 -c "from flash_attn.cute import interface" \
      && echo "flash-attn-4 installed into $S" ;;
  *)
    echo "usage: benchmarks/gpu_flash4.sh prepare|stage|install" >&2; exit 2 ;;
esac
