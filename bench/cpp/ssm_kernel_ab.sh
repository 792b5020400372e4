#!/bin/bash
# Time two versions of csrc/ssm_kernel.cpp against each other in one process (ssm_kernel_ab.cpp
# says why and how). OLD and NEW are kernel sources that share csrc/ssm_kernel.hpp's plan layout:
#   git show HEAD~1:csrc/ssm_kernel.cpp > /tmp/old.cpp
#   bench/cpp/ssm_kernel_ab.sh /tmp/old.cpp csrc/ssm_kernel.cpp 16 400
# Needs an AVX-512 CPU (both run with the avx512_256 flags); the build lands in a temporary folder.
set -euo pipefail
if [ $# -lt 4 ]; then echo "usage: $0 OLD.cpp NEW.cpp BATCH ROUNDS [SECONDS_PER_ROUND]" >&2; exit 2; fi
old=$(realpath "$1"); new=$(realpath "$2"); shift 2
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
flags=(-O3 -std=c++17 -ffp-contract=off -fno-math-errno -fno-tree-loop-distribute-patterns -I"$root/csrc")  # as CMakeLists.txt
v4=(-march=x86-64-v4 -mtune=generic -DNEXTICK_KERNEL_MV_LANES=8)
g++ "${flags[@]}" "${v4[@]}" -DNEXTICK_KERNEL_NAME=avx512 -c "$old" -o "$out/old.o" &
g++ "${flags[@]}" "${v4[@]}" -DNEXTICK_KERNEL_NAME=avx512_256 -c "$new" -o "$out/new.o" &
g++ "${flags[@]}" -DNEXTICK_KERNEL_AVX512 -DNEXTICK_KERNEL_AVX512_256 -c "$root/csrc/ssm.cpp" -o "$out/ssm.o" &
g++ "${flags[@]}" -c "$root/bench/cpp/ssm_kernel_ab.cpp" -o "$out/main.o" &
wait
g++ "$out"/*.o -o "$out/ssm_kernel_ab"
"$out/ssm_kernel_ab" "$@"
