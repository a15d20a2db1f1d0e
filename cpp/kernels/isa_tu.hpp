// The common start of the translation units compiled once per ISA (see CMakeLists.txt):
// the standard headers and the intrinsics their kernels use (non-temporal stores, F16C,
// AVX512_BF16), and the check that FUSEDOPS_ISA_NS names the namespace the unit defines.
// Each unit then includes its fusedops/ header, opens fusedops::FUSEDOPS_ISA_NS and an
// anonymous namespace, and includes its kernel headers there.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cmath>
#include <type_traits>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#ifndef FUSEDOPS_ISA_NS
#error "FUSEDOPS_ISA_NS must name the ISA this translation unit is compiled for"
#endif
